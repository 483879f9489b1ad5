//  Which sanitizer a test program was built with, for the few tests that
//  must step aside under one: CF_TEST_ASAN and CF_TEST_TSAN are 1 or 0
//  (GCC says so with __SANITIZE_*__, clang with __has_feature).

#ifndef CF_SANITIZE_H
#define CF_SANITIZE_H

#if defined(__SANITIZE_ADDRESS__)
#define CF_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CF_TEST_ASAN 1
#endif
#endif
#ifndef CF_TEST_ASAN
#define CF_TEST_ASAN 0
#endif

#if defined(__SANITIZE_THREAD__)
#define CF_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CF_TEST_TSAN 1
#endif
#endif
#ifndef CF_TEST_TSAN
#define CF_TEST_TSAN 0
#endif

#endif
