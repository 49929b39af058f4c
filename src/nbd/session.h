// The NBD transmission phase of one connection.
//
// Session::Run serves requests on a small set of worker threads until the client disconnects
// (NBD_CMD_DISC or end of stream), the connection breaks, or the socket is shut down from
// outside. See session.cc for the threading model.
#pragma once

#include <atomic>
#include <mutex>

#include "nbd/handshake.h"
#include "nbd/protocol.h"
#include "nbd/transport.h"

namespace blksnap::nbd {

class Session {
 public:
  // Borrows transport and in; both must outlive Run().
  Session(Transport& transport, InputBuffer& in, const Negotiated& negotiated);

  // Serves requests on `workers` threads (>= 1; the calling thread is one of them) and returns
  // when all of them have stopped.
  void Run(int workers);

 private:
  struct Scratch;  // per-worker reusable buffers

  void WorkerLoop();
  // Reads the next request (and a write's payload) under recv_mu_; false to stop.
  bool ReadRequest(Request* req, Scratch& s, uint32_t* pre_error);
  void Handle(const Request& req, Scratch& s, uint32_t pre_error);
  uint32_t Validate(const Request& req) const;
  void HandleRead(const Request& req, Scratch& s);
  void HandleBlockStatus(const Request& req, Scratch& s);
  Status AppendAllocation(const Request& req, Scratch& s);
  Status AppendCbt(const Request& req, Scratch& s);

  void SendSimple(uint64_t cookie, uint32_t error, std::span<const uint8_t> payload = {});
  void SendError(uint64_t cookie, uint32_t error, std::string_view message);
  void SendDone(uint64_t cookie);
  void Send(std::span<const iovec> iov);
  void Fail();

  Transport& transport_;
  InputBuffer& in_;
  const Negotiated negotiated_;
  BlockDevice& device_;
  const DeviceCapabilities caps_;
  const bool read_only_;

  std::mutex recv_mu_;  // guards in_ and reading from transport_
  std::mutex send_mu_;  // guards writing to transport_
  std::atomic<bool> stop_{false};
};

}  // namespace blksnap::nbd
