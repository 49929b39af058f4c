// Status: see include/blksnap/status.h.
#include "blksnap/status.h"

#include <cstring>

namespace blksnap {

Status::Status(const Status& other)
    : state_(other.state_ ? std::make_unique<State>(*other.state_) : nullptr) {}

Status& Status::operator=(const Status& other) {
  if (this != &other) state_ = other.state_ ? std::make_unique<State>(*other.state_) : nullptr;
  return *this;
}

Status Status::Error(int errnum, std::string_view message) {
  Status s;
  s.state_ = std::make_unique<State>(State{errnum > 0 ? errnum : EIO, std::string(message)});
  return s;
}

Status Status::FromErrno(std::string_view message) { return Error(errno, message); }

std::string_view Status::message() const noexcept {
  return state_ ? std::string_view(state_->message) : std::string_view("OK");
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out = state_->message;
  out += ": ";
  out += std::strerror(state_->errnum);
  return out;
}

}  // namespace blksnap
