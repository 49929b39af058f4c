// The service tests' fixture (service_test.cc, service_durable_test.cc): a real engine on small
// sparse files under a per-test directory, with fake fronts (FakeFronts) that record what was
// exposed, frozen and removed, and can be made busy, slow or failing. Header-only, test code.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "blksnap/env.h"
#include "blksnap/mapped_file.h"
#include "daemon/service.h"
#include "engine/engine_test_util.h"

namespace blksnap::daemon::fixture {

namespace fs = std::filesystem;

// What the fake fronts did, shared with the test.
struct FrontLog {
  std::mutex mu;
  std::set<std::string> exposed;  // names with live fronts
  std::set<std::string> busy;     // names whose fronts report EBUSY
  std::set<std::string> fail;     // names whose Expose fails
  std::vector<uint64_t> frozen;   // rdevs of the last freeze
  int thaws = 0;
  std::function<void()> on_freeze;                    // runs inside Freeze (e.g. to block it)
  std::map<std::string, ExposeOptions> options;       // each name's last Expose
  std::vector<int> orphans_removed;                   // RemoveOrphanUblk's dev_ids
  std::function<void(const std::string&)> on_remove;  // runs in Remove (outside mu)
};

class FakeFront final : public Front {
 public:
  FakeFront(std::shared_ptr<FrontLog> log, std::string name, uint64_t rdev, int ublk_dev_id = -1)
      : log_(std::move(log)), name_(std::move(name)), rdev_(rdev), ublk_dev_id_(ublk_dev_id) {
    std::lock_guard lock(log_->mu);
    log_->exposed.insert(name_);
  }
  ~FakeFront() override { Remove().IgnoreError(); }
  const char* kind() const override { return "fake"; }
  void Describe(FrontAddresses& out) const override {
    if (removed_) return;
    out.nbd = "fake://" + name_;
    if (ublk_dev_id_ >= 0) {
      out.ublk = "/dev/ublkb" + std::to_string(ublk_dev_id_);
      out.ublk_dev_id = ublk_dev_id_;
    }
  }
  uint64_t rdev() const override { return removed_ ? 0 : rdev_; }
  Status CheckIdle() const override {
    std::lock_guard lock(log_->mu);
    if (log_->busy.count(name_)) return Status::Error(EBUSY, "fake front " + name_ + " is open");
    return Status::Ok();
  }
  Status Remove() override {
    if (removed_) return Status::Ok();
    removed_ = true;
    std::function<void(const std::string&)> hook;
    {
      std::lock_guard lock(log_->mu);
      log_->exposed.erase(name_);
      hook = log_->on_remove;
    }
    if (hook) hook(name_);
    return Status::Ok();
  }

 private:
  std::shared_ptr<FrontLog> log_;
  const std::string name_;
  const uint64_t rdev_;
  const int ublk_dev_id_;
  bool removed_ = false;
};

class FakeFronts final : public Fronts {
 public:
  explicit FakeFronts(std::shared_ptr<FrontLog> log) : log_(std::move(log)) {
    info_.nbd = true;
    info_.fuse = true;
    info_.ublk = true;  // a "ublk" front is a fake one with a dev_id
    info_.block_frontend = "fuse-loop";
  }
  const FrontsInfo& info() const override { return info_; }
  Result<std::unique_ptr<Exposure>> Expose(const std::string& name, std::shared_ptr<BlockDevice>,
                                           std::shared_ptr<const CbtSource>,
                                           const ExposeOptions& options) override {
    {
      std::lock_guard lock(log_->mu);
      if (log_->fail.count(name)) return Status::Error(EIO, "fake expose failure");
      log_->options[name] = options;
    }
    auto e = std::make_unique<Exposure>();
    // A "loop" front gets a fake device number, so a take has something to freeze; a "ublk"
    // one a dev_id (the recovered one, else a new one).
    int ublk_dev_id = -1;
    if (options.ublk) {
      ublk_dev_id = options.ublk_recover_id >= 0 ? options.ublk_recover_id : next_ublk_id_++;
    }
    e->Add(std::make_unique<FakeFront>(log_, name, options.loop ? 0x7000 + next_rdev_++ : 0,
                                       ublk_dev_id));
    return e;
  }
  Status RemoveOrphanUblk(int dev_id, uint64_t, uint32_t) override {
    std::lock_guard lock(log_->mu);
    log_->orphans_removed.push_back(dev_id);
    return Status::Ok();
  }
  Result<std::function<void()>> Freeze(const std::vector<uint64_t>& rdevs) override {
    std::function<void()> hook;
    {
      std::lock_guard lock(log_->mu);
      log_->frozen = rdevs;
      hook = log_->on_freeze;
    }
    if (hook) hook();
    auto log = log_;
    return std::function<void()>([log] {
      std::lock_guard lock(log->mu);
      ++log->thaws;
    });
  }
  void Stop() override {}

 private:
  std::shared_ptr<FrontLog> log_;
  FrontsInfo info_;
  uint64_t next_rdev_ = 1;
  int next_ublk_id_ = 10;
};

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("blksnap-service-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "state");
    fs::create_directories(dir_ / "storage");
    log_ = std::make_shared<FrontLog>();
  }
  void TearDown() override {
    service_.reset();
    fs::remove_all(dir_);
  }

  std::string MakeFile(const std::string& name, uint64_t size = 64ull << 20) {
    std::string path = (dir_ / name).string();
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
    ::close(fd);
    return path;
  }

  // files: the state files' seam (its boot id); null: the kernel's.
  void Start(bool with_state = true, bool durable_cbt = false,
             std::shared_ptr<MappedFiles> files = nullptr) {
    Config config;
    auto engine = Engine::Create(config);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = engine->get();
    ServiceInfo info;
    if (with_state) info.state_dir = (dir_ / "state").string();
    info.durable_cbt = durable_cbt;
    info.control_path = "/nonexistent/control.sock";
    info.mapped_files = std::move(files);
    service_ = std::make_unique<Service>(std::move(engine).value(),
                                         std::make_unique<FakeFronts>(log_), info);
    service_->Restore();
  }

  bool Exposed(const std::string& name) {
    std::lock_guard lock(log_->mu);
    return log_->exposed.count(name) > 0;
  }

  fs::path dir_;
  std::shared_ptr<FrontLog> log_;
  Engine* engine_ = nullptr;
  std::unique_ptr<Service> service_;
};

inline std::string ReadText(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace blksnap::daemon::fixture
