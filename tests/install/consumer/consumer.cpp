//  SPDX-License-Identifier: MIT
//
//  The same from C++: the header compiles as C++ (extern "C", no compound
//  literals needed: options are a declared struct), CF_TASK works in a
//  C++ file, and a future's error comes back as it does in C.

#include <cfutures.h>

#include <cstdio>
#include <cstring>
#include <string>

static void shout(cf_call_t *call)
{
    const char *word = cf_arg_str(call, 0);
    if (cf_failed(call))
        return;
    std::string loud(word);
    if (loud.empty()) {
        cf_raise(call, "ValueError", "nothing to shout");
        return;
    }
    for (char &c : loud)
        c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
    cf_return_str(call, loud.c_str());
}
CF_TASK(shout);

int main()
{
    cf_options_t options{};
    options.max_workers = 2;
    cf_executor_t *ex = cf_executor_new(CF_THREADS, &options);
    if (!ex) {
        std::fprintf(stderr, "%s\n", cf_last_error());
        return 1;
    }
    cf_future_t *ok = cf_submit(ex, "shout", "s", "hello");
    cf_future_t *bad = cf_submit(ex, "shout", "s", "");
    const char *text = nullptr;
    cf_err_t rc = cf_future_str(ok, 10000, &text);
    cf_err_t rc_bad = cf_future_wait(bad, 10000);
    const cf_task_error_t *error = cf_future_error(bad);
    bool good = rc == CF_OK && text && std::strcmp(text, "HELLO") == 0 && rc_bad == CF_OK
             && error && std::strcmp(error->type, "ValueError") == 0;
    std::printf("c++ consumer: cfutures %s, shout('hello') = %s, shout('') raised %s\n",
                cf_version(nullptr, nullptr, nullptr), text ? text : "(none)",
                error ? error->type : "(nothing)");
    cf_future_release(&ok);
    cf_future_release(&bad);
    cf_executor_destroy(&ex);
    return good ? 0 : 1;
}
