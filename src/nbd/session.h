// The NBD transmission phase of one connection.
//
// Session::Run serves requests on a small set of worker threads until the client disconnects
// (NBD_CMD_DISC or end of stream), the connection breaks, a request stalls past its timeout,
// or the socket is shut down from outside. See session.cc for the threading model and the
// resource bounds (SessionLimits).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "nbd/budget.h"
#include "nbd/handshake.h"
#include "nbd/protocol.h"
#include "nbd/transport.h"
#include "util/mutex.h"
#include "util/thread_annotations.h"

namespace blksnap::nbd {

// What one connection may hold (ServerOptions' limits, as the server hands them down).
struct SessionLimits {
  int max_workers = 8;              // threads serving the connection, the caller's included
  Budget* extra_workers = nullptr;  // server-wide budget of threads beyond the first
  uint64_t connection_inflight = 64u << 20;  // payload bytes held at once by this connection
  Budget* total_inflight = nullptr;          // server-wide payload budget (null: none)
  // Server-wide claims of write payloads being received (limit = total_inflight's): a write
  // claims its whole length before its first byte is reserved, so receivers can never hold
  // the whole budget between them while each waits for more (no deadlock).
  Budget* total_receiving = nullptr;
  std::chrono::milliseconds request_timeout{0};  // 0: a stalled request is waited for forever
  const std::atomic<bool>* shut_down = nullptr;  // set when the server shut the socket down
  std::function<void(const std::string&)> log;   // why the connection was closed (may be empty)
};

class Session {
 public:
  // Borrows transport and in; both must outlive Run().
  Session(Transport& transport, InputBuffer& in, const Negotiated& negotiated,
          SessionLimits limits = {});

  // Serves requests until the connection ends, on the calling thread and on up to
  // max_workers - 1 more threads started on demand; returns when all of them have stopped.
  void Run();

 private:
  struct Scratch;  // per-worker reusable buffers

  void WorkerLoop();
  // Starts one more worker if none is free to read the next request and the budgets allow.
  void MaybeAddWorker();
  // Reads the next request (and a write's payload) under recv_mu_; false to stop.
  bool ReadRequest(Request* req, Scratch& s, uint32_t* pre_error) EXCLUDES(recv_mu_);
  bool ReadPayload(const Request& req, Scratch& s) REQUIRES(recv_mu_);
  // Takes n bytes of the connection's and the server's in-flight budgets for this request, both
  // or none, waiting with neither held (returned by Release after the reply). False only when
  // the connection stops. *waited (if given) tells whether it had to wait.
  bool Reserve(uint64_t n, Scratch& s, bool* waited = nullptr);
  bool Stopped() const;
  void Release(Scratch& s);
  void Handle(const Request& req, Scratch& s, uint32_t pre_error);
  uint32_t Validate(const Request& req) const;
  void HandleRead(const Request& req, Scratch& s);
  void HandleBlockStatus(const Request& req, Scratch& s);
  Status AppendAllocation(const Request& req, Scratch& s);
  Status AppendCbt(const Request& req, Scratch& s);

  void SendSimple(uint64_t cookie, uint32_t error, std::span<const uint8_t> payload = {});
  void SendError(uint64_t cookie, uint32_t error, std::string_view message);
  void SendDone(uint64_t cookie);
  // Sends one reply (its bytes contiguous on the wire). See "Replies" in session.cc.
  void Send(std::span<const iovec> iov) EXCLUDES(send_mu_);
  // The sender's loop: writes `first` (may be empty) plus what is queued, until nothing is.
  void SendAsSender(std::vector<uint8_t>& batch, std::span<const iovec> first) EXCLUDES(send_mu_);
  void Fail();
  void Log(const std::string& why);

  Transport& transport_;
  InputBuffer& in_ GUARDED_BY(recv_mu_);
  const Negotiated negotiated_;
  BlockDevice& device_;
  const DeviceCapabilities caps_;
  const bool read_only_;
  const SessionLimits limits_;
  Budget connection_inflight_;

  Mutex recv_mu_;  // guards in_ and reading from transport_
  // Replies: one thread at a time (sending_) writes to transport_ (a reference: no
  // GUARDED_BY possible); small replies of the others wait in queued_ for it.
  Mutex send_mu_;
  CondVar sender_cv_;  // sending_ cleared: one waiter for the sender role is woken
  CondVar room_cv_;    // queued_ drained (or sending_ cleared): small replies may queue again
  bool sending_ GUARDED_BY(send_mu_) = false;
  std::vector<uint8_t> queued_ GUARDED_BY(send_mu_);
  int sender_waiters_ GUARDED_BY(send_mu_) = 0;
  int room_waiters_ GUARDED_BY(send_mu_) = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> logged_{false};  // one reason per connection is enough

  // Workers: started_ counts threads (the caller's included), free_ those not executing a
  // request (waiting to read or reading). threads_ holds the extra ones for Run to join.
  std::atomic<int> started_{1};
  std::atomic<int> free_{1};
  Mutex threads_mu_;
  std::vector<std::thread> threads_ GUARDED_BY(threads_mu_);
};

}  // namespace blksnap::nbd
