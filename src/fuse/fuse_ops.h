// The FUSE low-level operations of a fuse::Mount: requests on the root directory and its files
// turned into FileTable lookups and BlockDevice calls.
//
// Every operation finds its FileTable with Session::Userdata(req): start the Session with
// Start(FileOperations(), &table). See fuse_ops.cc for how each request maps.
#pragma once

struct fuse_lowlevel_ops;

namespace blksnap::fuse {

const fuse_lowlevel_ops& FileOperations();

}  // namespace blksnap::fuse
