// Percent-encoding (RFC 3986) of URI components: NBD URIs (nbd_server.cc) and S3 query strings
// (s3_client.cc, s3_store.cc).
#pragma once

#include <string>
#include <string_view>

namespace blksnap {

// Percent-encodes everything but RFC 3986 unreserved characters (A-Z a-z 0-9 - . _ ~) and the
// bytes in `keep`, as %XX with upper-case hex digits.
std::string PercentEncode(std::string_view s, std::string_view keep = "");

}  // namespace blksnap
