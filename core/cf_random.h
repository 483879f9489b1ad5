//  Random numbers for ids that must differ between runs (task ids, boot
//  ids, identities), not for secrets: keys come from libzmq (cf_keys).

#ifndef CF_RANDOM_H
#define CF_RANDOM_H

#include <stdint.h>

//  64 random bits, never 0 (0 means "unknown" in the protocol's ids). From
//  getrandom(); when the kernel has no entropy yet (early boot), from the
//  time, the pid and an address, which still differ between runs.
uint64_t cf_random_u64(void);

#endif
