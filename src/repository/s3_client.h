// S3Client: signed S3 requests over libcurl (issue 17), the layer under the S3 object store.
//
// A location is a URL: s3://BUCKET[/PREFIX]?endpoint=URL&region=R&credentials=FILE&profile=P
//   endpoint     the service's base URL (radosgw: http://host:port); default
//                https://s3.REGION.amazonaws.com
//   region       default us-east-1 (radosgw accepts any)
//   style        path (the bucket in the path: the default with an endpoint) or virtual (the
//                bucket in the host name: the default for AWS)
//   credentials  an AWS-style shared credentials file ([profile] aws_access_key_id = ...,
//                aws_secret_access_key = ..., aws_session_token = ...); default: the
//                environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then
//                AWS_SHARED_CREDENTIALS_FILE / ~/.aws/credentials
//   profile      the file's section; default AWS_PROFILE or "default"
// The URL never carries a secret, so it may appear in logs, `ps` and state files; the keys live
// only in this object's memory (and curl's while a request is signed).
//
// Signing is libcurl's (CURLOPT_AWS_SIGV4 "aws:amz:REGION:s3"); the client adds the payload's
// SHA-256 as x-amz-content-sha256 (S3 requires it; curl signs it; curl 7.88 also signs an empty
// header it then leaves out, so "Expect:" is never given) and the query's keys come sorted
// (curl signs the query as given). Transient failures (no
// connection, timeouts, HTTP 500/502/503/504, 429) are retried with exponential backoff
// (kMaxAttempts); the rest map to an errno and one line naming the operation and the S3 error
// code, never a key:
//   404 NoSuchKey -> ENOENT, NoSuchBucket -> ENOENT "no such bucket", 403 -> EACCES,
//   412 (If-None-Match) -> EEXIST, 507 / QuotaExceeded / XAmzContentSHA256Mismatch... -> ENOSPC
//   or EIO.
// Thread-safe: each request takes an easy handle from a pool (connections are reused).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "blksnap/status.h"
#include "util/mutex.h"
#include "util/thread_annotations.h"

namespace blksnap::repo {

struct S3Location {
  std::string bucket;
  std::string prefix;    // "" or ending with '/'
  std::string endpoint;  // scheme://host[:port], no trailing '/'
  std::string region = "us-east-1";
  bool path_style = true;
  std::string credentials_file;  // "" = the environment's
  std::string profile;           // "" = AWS_PROFILE or "default"
};

// EINVAL with one line naming the problem for anything but a well-formed s3:// URL.
Result<S3Location> ParseS3Url(const std::string& url);

struct S3Credentials {
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // may be empty
};

// From the location's file, else the environment, else the default shared file. EACCES-free
// messages: never a key in them.
Result<S3Credentials> LoadS3Credentials(const S3Location& location);

struct S3Response {
  long status = 0;
  std::vector<uint8_t> body;  // empty when a 200's body went into the caller's buffer
  size_t body_size = 0;       // the body's length, wherever it went
  std::map<std::string, std::string> headers;  // names lowercased
  std::string Header(const std::string& name) const;
};

class S3Client {
 public:
  static constexpr int kMaxAttempts = 6;

  S3Client(S3Location location, S3Credentials credentials);
  ~S3Client();
  S3Client(const S3Client&) = delete;
  S3Client& operator=(const S3Client&) = delete;

  // One request for `key` (relative to the bucket: the caller adds the prefix; "" = the bucket
  // itself) with `query` (already encoded, keys sorted), retried while transient. Returns the
  // response for any final HTTP status; a Status only when no response came. With `into`, the
  // body of a 200 response is written there (no allocation; S3Store::ReadInto), and a body
  // longer than it fails the request with EMSGSIZE; other bodies (an error's XML) still go to
  // response.body. Without it, response.body is allocated once from the Content-Length.
  Result<S3Response> Request(const std::string& method, const std::string& key,
                             const std::string& query, std::span<const uint8_t> body = {},
                             const std::vector<std::string>& headers = {},
                             std::span<uint8_t>* into = nullptr);

  // The Status for a response that is not a success: `what` names the operation and object.
  static Status ErrorOf(const S3Response& response, const std::string& what);

  const S3Location& location() const { return location_; }

 private:
  void* TakeHandle() EXCLUDES(mu_);
  void GiveHandle(void* handle) EXCLUDES(mu_);
  std::string UrlFor(const std::string& key, const std::string& query) const;

  const S3Location location_;
  const S3Credentials credentials_;
  Mutex mu_;
  std::vector<void*> handles_ GUARDED_BY(mu_);  // idle CURL easy handles
};

// Seconds since the epoch of an HTTP date (RFC 1123) or an ISO 8601 UTC time
// (2026-11-30T23:41:05.000Z); -1 if unparsable.
int64_t S3ParseTime(const std::string& text);

}  // namespace blksnap::repo
