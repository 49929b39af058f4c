// Unit tests of the Env seam: the POSIX Env on a temporary directory, MemoryEnv, and FaultEnv
// failing each step of WriteFileAtomic and of a storage file.
#include "blksnap/env.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "blksnap/io.h"

namespace blksnap {
namespace {

namespace fs = std::filesystem;
using Op = FaultEnv::Op;

class EnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/blksnap-env-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  std::string dir_;
};

TEST_F(EnvTest, ReadFileOfMissingIsEnoent) {
  auto r = Env::Default()->ReadFile(dir_ + "/missing");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().errnum(), ENOENT);
  MemoryEnv mem;
  EXPECT_EQ(mem.ReadFile("/x", Env::kMaxReadFileSize).status().errnum(), ENOENT);
}

TEST_F(EnvTest, ReadFileIsCapped) {
  Env* env = Env::Default();
  ASSERT_TRUE(env->WriteFileAtomic(dir_ + "/f", std::string(5000, 'x')).ok());
  auto r = env->ReadFile(dir_ + "/f", 4999);
  EXPECT_EQ(r.status().errnum(), EFBIG);
  auto whole = env->ReadFile(dir_ + "/f", 5000);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  EXPECT_EQ(*whole, std::string(5000, 'x'));
  // A file whose size fstat does not know (procfs) is read to its end.
  auto proc = env->ReadFile("/proc/self/status");
  ASSERT_TRUE(proc.ok()) << proc.status().ToString();
  EXPECT_NE(proc->find("Pid:"), std::string::npos);
  EXPECT_EQ(env->ReadFile("/proc/self/status", 10).status().errnum(), EFBIG);
}

TEST_F(EnvTest, WriteFileAtomicReplacesWithMode0600) {
  Env* env = Env::Default();
  const std::string path = dir_ + "/state.json";
  ASSERT_TRUE(env->WriteFileAtomic(path, "one").ok());
  ASSERT_TRUE(env->WriteFileAtomic(path, "two!").ok());
  EXPECT_EQ(Slurp(path), "two!");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  auto st = env->Stat(path);
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->exists);
  EXPECT_EQ(st->kind, FileKind::kRegular);
  EXPECT_EQ(st->size, 4u);
  auto missing = env->Stat(dir_ + "/nothing");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->exists);
  EXPECT_EQ(env->Stat(dir_)->kind, FileKind::kDirectory);
}

TEST_F(EnvTest, WriteFileAtomicRemovesAStaleTemp) {
  const std::string path = dir_ + "/state.json";
  std::ofstream(path + ".tmp") << "left by a crash";
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(path, "new").ok());
  EXPECT_EQ(Slurp(path), "new");
}

TEST_F(EnvTest, NewWritableFileRefusesASymlink) {
  const std::string target = dir_ + "/target";
  const std::string link = dir_ + "/link";
  std::ofstream(target) << "precious";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  auto f = Env::Default()->NewWritableFile(link);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().errnum(), EEXIST);
  // Dangling, too: O_CREAT|O_EXCL never creates through a symlink.
  const std::string dangling = dir_ + "/dangling";
  ASSERT_EQ(::symlink((dir_ + "/nowhere").c_str(), dangling.c_str()), 0);
  EXPECT_EQ(Env::Default()->NewWritableFile(dangling).status().errnum(), EEXIST);
  EXPECT_FALSE(fs::exists(dir_ + "/nowhere"));
  EXPECT_EQ(Slurp(target), "precious");
}

// Each step of the atomic replace, failed in turn: the old content stays, no temp is left.
TEST_F(EnvTest, FailedAtomicReplaceKeepsTheOldContent) {
  struct Case {
    Op op;
    uint64_t nth;
    int errnum;
  };
  const std::vector<Case> cases = {
      {Op::kOpen, 1, EACCES}, {Op::kWrite, 1, EIO}, {Op::kSync, 1, EIO}, {Op::kRename, 1, EXDEV}};
  const std::string path = dir_ + "/state.json";
  for (const auto& c : cases) {
    FaultEnv env(Env::Default());
    ASSERT_TRUE(env.WriteFileAtomic(path, "old").ok());
    env.FailNth(c.op, c.nth, c.errnum);
    Status s = env.WriteFileAtomic(path, "new content");
    EXPECT_EQ(s.errnum(), c.errnum) << static_cast<int>(c.op) << ": " << s.ToString();
    EXPECT_NE(s.message().find("injected"), std::string_view::npos);
    EXPECT_EQ(Slurp(path), "old") << static_cast<int>(c.op);
    EXPECT_FALSE(fs::exists(path + ".tmp")) << static_cast<int>(c.op);
  }
  FaultEnv env(Env::Default());
  env.NoSpaceAfter(5);
  EXPECT_EQ(env.WriteFileAtomic(path, "new content").errnum(), ENOSPC);
  EXPECT_EQ(Slurp(path), "old");
  EXPECT_TRUE(env.WriteFileAtomic(path, "new").ok());  // fits the 5 bytes left
  EXPECT_EQ(Slurp(path), "new");
}

TEST_F(EnvTest, FaultEnvCountsAndDisarms) {
  FaultEnv env(Env::Default());
  const std::string path = dir_ + "/f";
  env.FailNth(Op::kSync, 2, EIO);  // the file's fsync passes, the directory's fails
  Status s = env.WriteFileAtomic(path, "x");
  EXPECT_EQ(s.errnum(), EIO);
  EXPECT_EQ(Slurp(path), "x");  // the rename happened: only durability is in doubt
  EXPECT_EQ(env.calls(Op::kSync), 2u);
  EXPECT_TRUE(env.WriteFileAtomic(path, "y").ok());  // one-shot
  env.FailAll(Op::kRename, EROFS);
  EXPECT_EQ(env.WriteFileAtomic(path, "z").errnum(), EROFS);
  EXPECT_EQ(env.WriteFileAtomic(path, "z").errnum(), EROFS);
  env.Reset();
  EXPECT_TRUE(env.WriteFileAtomic(path, "z").ok());
  EXPECT_EQ(Slurp(path), "z");
}

TEST_F(EnvTest, MemoryEnvAtomicReplace) {
  MemoryEnv mem;
  mem.AddDirectory("/state");
  ASSERT_TRUE(mem.WriteFileAtomic("/state/a", "one").ok());
  EXPECT_EQ(*mem.ReadFile("/state/a", 100), "one");
  EXPECT_EQ(mem.ReadFile("/state/a", 2).status().errnum(), EFBIG);
  EXPECT_FALSE(mem.HasFile("/state/a.tmp"));
  EXPECT_EQ(mem.Stat("/state")->kind, FileKind::kDirectory);
  EXPECT_EQ(mem.Stat("/state/a")->size, 3u);
  FaultEnv fault(&mem);
  fault.FailNth(Op::kRename, 1, EIO);
  EXPECT_FALSE(fault.WriteFileAtomic("/state/a", "two").ok());
  EXPECT_EQ(*mem.ReadFile("/state/a", 100), "one");
  EXPECT_FALSE(mem.HasFile("/state/a.tmp"));
  ASSERT_TRUE(mem.RenameFile("/state/a", "/state/b").ok());
  EXPECT_FALSE(mem.Stat("/state/a")->exists);
  ASSERT_TRUE(mem.RemoveFile("/state/b").ok());
  EXPECT_EQ(mem.RemoveFile("/state/b").errnum(), ENOENT);
  // No file outside a known directory.
  EXPECT_EQ(mem.WriteFileAtomic("/nodir/x", "1").errnum(), ENOENT);
  EXPECT_FALSE(mem.HasFile("/nodir/x"));
  EXPECT_EQ(mem.OpenStorageFile("/nodir/s", {}).status().errnum(), ENOENT);
}

TEST_F(EnvTest, StorageFileInADirectoryIsUnnamed) {
  auto file = Env::Default()->OpenStorageFile(dir_);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->stat().kind, FileKind::kRegular);
  EXPECT_TRUE(fs::is_empty(dir_));
  ASSERT_TRUE((*file)->Truncate(4 << 20).ok());
  ASSERT_TRUE((*file)->Reserve(0, 1 << 20).ok());
  auto free = (*file)->FreeBytes();
  ASSERT_TRUE(free.ok());
  EXPECT_GT(*free, 0u);
  auto device = (*file)->OpenDevice();
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  EXPECT_EQ((*device)->size(), 4u << 20);
  std::vector<uint8_t> block(4096, 0xab);
  ASSERT_TRUE((*device)->Write(8192, block, 0).ok());
  std::vector<uint8_t> back(16);
  auto n = (*file)->ReadAt(8192, back);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 16u);
  EXPECT_EQ(back[15], 0xab);
}

TEST_F(EnvTest, StorageFileKinds) {
  Env* env = Env::Default();
  const std::string path = dir_ + "/storage";
  auto file = env->OpenStorageFile(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_EQ((*file)->stat().ino, env->Stat(path)->ino);
  EXPECT_EQ(env->OpenStorageFile("/dev/null").status().errnum(), EINVAL);
  EXPECT_EQ(env->OpenStorageFile(dir_ + "/no/such/dir/file").status().errnum(), ENOENT);
}

TEST_F(EnvTest, FaultEnvFailsStorageSteps) {
  FaultEnv env(Env::Default());
  env.FailNth(Op::kOpen, 1, EMFILE);
  EXPECT_EQ(env.OpenStorageFile(dir_, {}).status().errnum(), EMFILE);
  auto file = env.OpenStorageFile(dir_, {});
  ASSERT_TRUE(file.ok());
  env.FailNth(Op::kTruncate, 1, EFBIG);
  EXPECT_EQ((*file)->Truncate(8 << 20).errnum(), EFBIG);
  ASSERT_TRUE((*file)->Truncate(8 << 20).ok());
  env.NoSpaceAfter(1 << 20);
  EXPECT_EQ((*file)->Reserve(0, 2 << 20).errnum(), ENOSPC);
  EXPECT_LE(*(*file)->FreeBytes(), 1u << 20);
  ASSERT_TRUE((*file)->Reserve(0, 1 << 20).ok());
  auto device = (*file)->OpenDevice();
  ASSERT_TRUE(device.ok());
  auto fault = env.last_storage_device();
  ASSERT_NE(fault, nullptr);
  fault->FailNthWrite(1, EIO);
  std::vector<uint8_t> block(4096, 1);
  EXPECT_EQ((*device)->Write(0, block, 0).errnum(), EIO);
  EXPECT_TRUE((*device)->Write(0, block, 0).ok());
}

TEST_F(EnvTest, MemoryEnvStorageFile) {
  MemoryEnv mem;
  mem.AddDirectory("/tmp");
  mem.SetFreeBytes(3 << 20);
  auto anon = mem.OpenStorageFile("/tmp", {});
  ASSERT_TRUE(anon.ok());
  EXPECT_FALSE(mem.HasFile("/tmp"));
  ASSERT_TRUE((*anon)->Truncate(64ull << 30).ok());  // sparse: costs nothing
  EXPECT_EQ(*(*anon)->FreeBytes(), 3u << 20);
  ASSERT_TRUE((*anon)->Reserve(0, 2 << 20).ok());
  EXPECT_EQ((*anon)->Reserve(2 << 20, 2 << 20).errnum(), ENOSPC);
  auto device = (*anon)->OpenDevice();
  ASSERT_TRUE(device.ok());
  EXPECT_EQ((*device)->size(), 64ull << 30);
  auto named = mem.OpenStorageFile("/tmp/s", {});
  ASSERT_TRUE(named.ok());
  EXPECT_TRUE(mem.HasFile("/tmp/s"));
  EXPECT_NE((*named)->stat().ino, (*anon)->stat().ino);
}

}  // namespace
}  // namespace blksnap
