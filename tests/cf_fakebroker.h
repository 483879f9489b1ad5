//  cf_fakebroker: the broker end of cf/1 for unit tests of workers. A ROUTER
//  on tcp://127.0.0.1:* that a test drives by hand: it reads what workers
//  send (remembering who sent it) and sends TASK, HEARTBEAT or anything the
//  encoder holds. Failures are cmocka assertions.

#ifndef CF_FAKEBROKER_H
#define CF_FAKEBROKER_H

#include "cf_proto.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

//  How long cf_fakebroker_expect waits for a message.
#define CF_FAKEBROKER_WAIT_MS 20000

typedef struct {
    void *ctx;
    void *router;
    char endpoint[128];     //  what workers connect to
    cf_proto_enc_t *enc;    //  build messages here, then send
    char peer[256];         //  routing id of the last sender, NUL-terminated
    size_t peer_len;
    int heartbeats;      //  HEARTBEATs cf_fakebroker_expect skipped
    uint64_t credit;     //  CREDIT cf_fakebroker_expect skipped, summed
    uint64_t started;    //  ids of STARTED cf_fakebroker_expect skipped
    int readies;         //  READYs cf_fakebroker_expect skipped
} cf_fakebroker_t;

void cf_fakebroker_start(cf_fakebroker_t *b);
void cf_fakebroker_stop(cf_fakebroker_t *b);

//  A cmocka fixture: *state is a started cf_fakebroker_t for the test;
//  teardown stops and frees it.
int cf_fakebroker_setup(void **state);
int cf_fakebroker_teardown(void **state);
#define CF_FAKEBROKER_TEST(test) \
    cmocka_unit_test_setup_teardown(test, cf_fakebroker_setup, cf_fakebroker_teardown)

//  The next message from any worker, NULL after timeout_ms.
cf_proto_msg_t *cf_fakebroker_recv(cf_fakebroker_t *b, int timeout_ms);

//  The next message of type, skipping (and counting) HEARTBEAT, CREDIT (a
//  worker's prefetch), STARTED and READY (a worker that trims its prefetch
//  announces itself again) unless type is one of them; anything else, or
//  nothing within CF_FAKEBROKER_WAIT_MS, fails the test.
cf_proto_msg_t *cf_fakebroker_expect(cf_fakebroker_t *b, cf_msg_type_t type);

//  cf_fakebroker_expect for a message the test needs nothing of: drops it.
void cf_fakebroker_await(cf_fakebroker_t *b, cf_msg_type_t type);

//  Sends what the encoder holds to the last sender, or to identity.
void cf_fakebroker_send(cf_fakebroker_t *b);
void cf_fakebroker_send_to(cf_fakebroker_t *b, const char *identity);

//  Adds a task item to the TASK being built; fmt and the rest are its
//  arguments as for cf_submit.
void cf_fakebroker_add_task(cf_fakebroker_t *b, uint64_t id, const char *fn, const char *fmt, ...);
void cf_fakebroker_add_taskv(cf_fakebroker_t *b, uint64_t id, const char *fn, const char *fmt,
                             va_list *ap);
//  cf_fakebroker_add_task with the item's flags (CF_TASK_LONE).
void cf_fakebroker_add_flagged_task(cf_fakebroker_t *b, uint64_t id, const char *fn, uint32_t flags,
                                    const char *fmt, ...);

//  Sends a TASK of that one task item to the last sender.
void cf_fakebroker_send_task(cf_fakebroker_t *b, uint64_t id, const char *fn, const char *fmt, ...);

#endif
