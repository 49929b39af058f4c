// Status and Result<T>: the error model of the data path.
//
// A Status is OK (no allocation, one null pointer) or carries a positive errno value and a
// short message saying what failed. Result<T> holds either a T or a non-OK Status. Both are
// [[nodiscard]]: an ignored error is a compile error under -Werror.
#pragma once

#include <cerrno>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace blksnap {

class [[nodiscard]] Status {
 public:
  Status() noexcept = default;
  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;
  ~Status() = default;

  static Status Ok() { return Status(); }
  // errnum must be a positive errno value (EIO, ENOSPC, ...).
  static Status Error(int errnum, std::string_view message);
  // Captures the current errno; message names the operation ("pread /dev/sda").
  static Status FromErrno(std::string_view message);

  bool ok() const noexcept { return state_ == nullptr; }
  int errnum() const noexcept { return state_ ? state_->errnum : 0; }
  std::string_view message() const noexcept;
  // "message: strerror(errnum)", or "OK".
  std::string ToString() const;

  // Marks an error deliberately ignored (best-effort cleanup paths).
  void IgnoreError() const noexcept {}

 private:
  struct State {
    int errnum;
    std::string message;
  };
  std::unique_ptr<State> state_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(v_).ok()) v_ = Status::Error(EINVAL, "Result built from OK status");
  }

  bool ok() const noexcept { return std::holds_alternative<T>(v_); }
  const Status& status() const& {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  Status status() && { return ok() ? Status() : std::move(std::get<Status>(v_)); }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace blksnap

#define BLKSNAP_CONCAT_INNER_(a, b) a##b
#define BLKSNAP_CONCAT_(a, b) BLKSNAP_CONCAT_INNER_(a, b)

// Returns the Status of expr from the enclosing function if it is not OK.
#define BLKSNAP_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::blksnap::Status blksnap_status_ = (expr);        \
    if (!blksnap_status_.ok()) return blksnap_status_; \
  } while (0)

// Declares lhs from a Result<T> expression or returns its error.
#define BLKSNAP_ASSIGN_OR_RETURN(lhs, expr)                                \
  auto BLKSNAP_CONCAT_(blksnap_result_, __LINE__) = (expr);                \
  if (!BLKSNAP_CONCAT_(blksnap_result_, __LINE__).ok())                    \
    return std::move(BLKSNAP_CONCAT_(blksnap_result_, __LINE__)).status(); \
  lhs = std::move(BLKSNAP_CONCAT_(blksnap_result_, __LINE__)).value()
