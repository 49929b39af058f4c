// Mount: BlockDevices served as files of a FUSE file system (libfuse3 low-level API).
//
// Design notes
// - Three parts, one file each: session.cc mounts and runs the libfuse worker threads (and
//   stops them cleanly), file_table.cc holds the files (names -> inodes -> devices, open
//   handles), fuse_ops.cc turns FUSE requests into table lookups and device calls. A Mount
//   wires them together: the session's operations find the table through its userdata.
// - Stop (~Mount): the session stops first (unmount, wake and join the workers, abort the
//   connection), then the table drops every device and frees the handles the kernel can no
//   longer release.
// - Locking: the table's (see file_table.h); Mount itself keeps no state of its own.
#include "fuse/fuse_mount.h"

#include "fuse/file_table.h"
#include "fuse/fuse_ops.h"
#include "fuse/session.h"

namespace blksnap::fuse {

class Mount::Impl {
 public:
  explicit Impl(std::string dir) : session_(std::move(dir)) {}
  ~Impl() {
    session_.Stop();
    files_.Clear();
  }

  Status Start() { return session_.Start(FileOperations(), &files_); }

  Status AddFile(const std::string& name, std::shared_ptr<BlockDevice> device, bool read_only) {
    if (session_.stopped()) return Status::Error(ENODEV, "FUSE mount stopped");
    return files_.Add(name, std::move(device), read_only);
  }

  Status RemoveFile(const std::string& name) {
    BLKSNAP_RETURN_IF_ERROR(files_.Remove(name));
    session_.InvalidateEntry(name);
    return Status::Ok();
  }

  bool IsOpen(const std::string& name) const { return files_.IsOpen(name); }
  const std::string& dir() const { return session_.dir(); }

 private:
  FileTable files_;  // declared first: outlives the session whose operations use it
  Session session_;
};

Result<std::unique_ptr<Mount>> Mount::Create(const std::string& dir) {
  BLKSNAP_ASSIGN_OR_RETURN(std::string path, PrepareMountDir(dir));
  auto impl = std::make_unique<Impl>(std::move(path));
  BLKSNAP_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<Mount>(new Mount(std::move(impl)));
}

Mount::Mount(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Mount::~Mount() = default;

Status Mount::AddFile(const std::string& name, std::shared_ptr<BlockDevice> device,
                      bool read_only) {
  return impl_->AddFile(name, std::move(device), read_only);
}
Status Mount::RemoveFile(const std::string& name) { return impl_->RemoveFile(name); }
bool Mount::IsOpen(const std::string& name) const { return impl_->IsOpen(name); }
std::string Mount::FilePath(const std::string& name) const { return impl_->dir() + "/" + name; }
const std::string& Mount::dir() const { return impl_->dir(); }

}  // namespace blksnap::fuse
