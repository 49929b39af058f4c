// EventLog: sequencing, many readers, `after` semantics, ENODEV after close, the cap.
#include "engine/event.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace blksnap {
namespace {

using std::chrono::milliseconds;

SnapshotEvent NoSpace(uint64_t requested) {
  SnapshotEvent event;
  event.type = SnapshotEvent::Type::kNoSpace;
  event.requested = requested;
  return event;
}

TEST(EventLogTest, SequencesFromOneAndTimesOut) {
  EventLog log;
  EXPECT_EQ(log.last_seq(), 0u);
  EXPECT_TRUE(log.records().empty());
  EXPECT_EQ(log.Wait(0, milliseconds(10)).status().errnum(), ETIMEDOUT);
  const auto before = std::chrono::system_clock::now();
  log.Push(NoSpace(1));
  log.Push(NoSpace(2));
  EXPECT_EQ(log.last_seq(), 2u);
  auto records = log.records();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].seq, 1u);
  EXPECT_EQ(records[1].seq, 2u);
  EXPECT_EQ(records[1].event.requested, 2u);
  EXPECT_GE(records[0].time, before);
}

TEST(EventLogTest, AfterPicksTheFirstLaterEventAndNothingIsConsumed) {
  EventLog log;
  for (uint64_t i = 1; i <= 3; ++i) log.Push(NoSpace(i));
  for (int reader = 0; reader < 2; ++reader) {  // reading twice gives the same answers
    auto r = log.Wait(0, milliseconds(0));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->seq, 1u);
    r = log.Wait(1, milliseconds(0));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->seq, 2u);
    EXPECT_EQ(r->event.requested, 2u);
    r = log.Wait(2, milliseconds(0));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->seq, 3u);
  }
  EXPECT_EQ(log.Wait(3, milliseconds(10)).status().errnum(), ETIMEDOUT);
  EXPECT_EQ(log.Wait(100, milliseconds(10)).status().errnum(), ETIMEDOUT);
}

TEST(EventLogTest, SeveralWaitersAllSeeTheSameEvent) {
  EventLog log;
  constexpr int kWaiters = 4;
  std::atomic<int> waiting{0};
  std::atomic<std::chrono::steady_clock::time_point> pushed{std::chrono::steady_clock::now()};
  std::vector<uint64_t> seen(kWaiters, 0);
  std::vector<uint64_t> requested(kWaiters, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i] {
      ++waiting;
      auto r = log.Wait(0, milliseconds(10000));
      // Woken by the push, not by its own timeout.
      EXPECT_LT(std::chrono::steady_clock::now() - pushed.load(), std::chrono::seconds(5));
      if (r.ok()) {
        seen[i] = r->seq;
        requested[i] = r->event.requested;
      }
    });
  }
  while (waiting.load() < kWaiters) std::this_thread::yield();
  std::this_thread::sleep_for(milliseconds(20));  // let them block
  pushed = std::chrono::steady_clock::now();
  log.Push(NoSpace(42));
  for (auto& t : threads) t.join();
  for (int i = 0; i < kWaiters; ++i) {
    EXPECT_EQ(seen[i], 1u) << "waiter " << i;
    EXPECT_EQ(requested[i], 42u) << "waiter " << i;
  }
}

TEST(EventLogTest, CloseWakesWaitersWithEnodevButKeptEventsStayReadable) {
  EventLog log;
  log.Push(NoSpace(1));
  std::thread waiter(
      [&] { EXPECT_EQ(log.Wait(1, milliseconds(10000)).status().errnum(), ENODEV); });
  std::this_thread::sleep_for(milliseconds(20));
  log.Close();
  waiter.join();
  auto r = log.Wait(0, milliseconds(0));  // an event after 0 is left: it is returned
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->seq, 1u);
  EXPECT_EQ(log.Wait(1, milliseconds(0)).status().errnum(), ENODEV);
  log.Push(NoSpace(2));  // ignored once closed
  EXPECT_EQ(log.last_seq(), 1u);
}

TEST(EventLogTest, KeepsTheNewest64) {
  EventLog log;
  for (uint64_t i = 1; i <= 100; ++i) log.Push(NoSpace(i));
  EXPECT_EQ(log.last_seq(), 100u);
  auto records = log.records();
  ASSERT_EQ(records.size(), EventLog::kMaxKept);
  ASSERT_EQ(records.size(), 64u);
  EXPECT_EQ(records.front().seq, 37u);
  EXPECT_EQ(records.back().seq, 100u);
  // A reader that fell behind gets the oldest kept event: the gap in seq shows what it missed.
  auto r = log.Wait(5, milliseconds(0));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->seq, 37u);
  r = log.Wait(50, milliseconds(0));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->seq, 51u);
  EXPECT_EQ(r->event.requested, 51u);
}

}  // namespace
}  // namespace blksnap
