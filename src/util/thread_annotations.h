// Clang thread-safety annotations (https://clang.llvm.org/docs/ThreadSafetyAnalysis.html).
//
// They document which mutex guards which field and which functions need it held, and a clang
// build with -Wthread-safety (CMake: BLKSNAP_THREAD_SAFETY=ON, run by .ci/run) checks them.
// Under GCC they expand to nothing. Use them with util/mutex.h: libstdc++'s std::mutex carries
// no annotations, so only blksnap::Mutex is checked.
#pragma once

#if defined(__clang__)
#define BLKSNAP_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define BLKSNAP_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) BLKSNAP_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY BLKSNAP_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) BLKSNAP_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) BLKSNAP_THREAD_ANNOTATION(pt_guarded_by(x))
#define ACQUIRED_BEFORE(...) BLKSNAP_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define ACQUIRED_AFTER(...) BLKSNAP_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#define REQUIRES(...) BLKSNAP_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) BLKSNAP_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define ACQUIRE(...) BLKSNAP_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) BLKSNAP_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) BLKSNAP_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) BLKSNAP_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define RELEASE_GENERIC(...) BLKSNAP_THREAD_ANNOTATION(release_generic_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) BLKSNAP_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define TRY_ACQUIRE_SHARED(...) BLKSNAP_THREAD_ANNOTATION(try_acquire_shared_capability(__VA_ARGS__))
#define EXCLUDES(...) BLKSNAP_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) BLKSNAP_THREAD_ANNOTATION(assert_capability(x))
#define ASSERT_SHARED_CAPABILITY(x) BLKSNAP_THREAD_ANNOTATION(assert_shared_capability(x))
#define RETURN_CAPABILITY(x) BLKSNAP_THREAD_ANNOTATION(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS BLKSNAP_THREAD_ANNOTATION(no_thread_safety_analysis)
