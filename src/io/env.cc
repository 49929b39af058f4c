// Env::WriteFileAtomic: the atomic replace built from an Env's primitives (see env.h).
//
// Steps: remove a stale temp, create the temp exclusively, write, fsync, close, rename over the
// target, fsync the directory. Every failure before the rename removes the temp (best effort) and
// returns the first error; the target is untouched. A failure of the final directory fsync is
// returned too, though the new content is then already in place (it may not survive a power cut).
#include "blksnap/env.h"

#include <cerrno>

#include "io/env_path.h"

namespace blksnap {

using io::DirName;

Status Env::WriteFileAtomic(const std::string& path, std::string_view data) {
  const std::string tmp = path + ".tmp";
  Status removed = RemoveFile(tmp);
  if (!removed.ok() && removed.errnum() != ENOENT) return removed;
  Status s;
  {
    auto file = NewWritableFile(tmp);
    if (!file.ok()) return file.status();
    s = (*file)->Append(data);
    if (s.ok()) s = (*file)->Sync();
    Status closed = (*file)->Close();
    if (s.ok()) s = std::move(closed);
  }
  if (s.ok()) s = RenameFile(tmp, path);
  if (!s.ok()) {
    RemoveFile(tmp).IgnoreError();
    return s;
  }
  return SyncDir(DirName(path));
}

}  // namespace blksnap
