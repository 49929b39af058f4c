// Path helpers shared by the Env implementations (env.h).
#pragma once

#include <string>

namespace blksnap::io {

// The directory holding path: "." for a bare name, "/" for a name at the root.
inline std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace blksnap::io
