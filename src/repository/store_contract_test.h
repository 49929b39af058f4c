// The ObjectStore contract (object_store.h) as one value-parameterised GoogleTest suite that every
// backend passes: a backend's test file instantiates StoreContractTest with its StoreBackend
// (object_store_test.cc: memory and local; rados_store_test.cc: RADOS on a test cluster). The
// tests are in store_contract_test.cc, linked into each of those test binaries.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "repository/object_store.h"

namespace blksnap::repo {

// Opens a fresh, empty store for one test. `temp_dir` is a new directory, removed after the test
// (after the store is destroyed).
struct StoreBackend {
  std::string name;
  std::function<Result<std::unique_ptr<ObjectStore>>(const std::string& temp_dir)> open;
};

// Failure messages name the backend (not the bytes of the struct).
inline void PrintTo(const StoreBackend& backend, std::ostream* os) { *os << backend.name; }

// For INSTANTIATE_TEST_SUITE_P: names the instances after their backend.
std::string StoreBackendName(const ::testing::TestParamInfo<StoreBackend>& info);

// Puts `a` and `b` alternately (`puts` times) to "config" while a thread reads it: every read
// must be one of them whole (Put is atomic).
void ExpectReadersSeeWholeObjects(ObjectStore& store, const std::vector<uint8_t>& a,
                                  const std::vector<uint8_t>& b, int puts);

// For stores whose leases live by renewal (RADOS, S3), with leases of `lease_seconds`: stops the
// process in `pid_file` (a cluster daemon) with SIGSTOP for one lease duration, then continues
// it. A lease renewed in time never says Lapsed(); the stalled one must.
void ExpectLeaseLapsesWhileStopped(const std::string& pid_file, ObjectStore& store,
                                   int lease_seconds);

class StoreContractTest : public ::testing::TestWithParam<StoreBackend> {
 protected:
  void SetUp() override;
  void TearDown() override;

  std::string dir_;
  std::unique_ptr<ObjectStore> store_;
};

}  // namespace blksnap::repo
