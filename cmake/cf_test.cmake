# SPDX-License-Identifier: MIT
# cf_test(name SOURCES a.c [b.c] LABEL unit|integration|fault [TIMEOUT s])
# One cmocka program, one CTest entry, linked to the static library so it
# reaches internals. Integration tests find the daemons and example task
# library through environment variables, never through fixed paths.
#
# A program that exits 77 ran nothing: CTest reports it as Skipped (never
# Passed), and tools/test.sh counts skips in its summary. A program that
# skips only some of its tests gives those a CTest entry of their own
# (cf_test_entry with an argument that selects them), so that each skip is
# seen.
function(cf_test name)
    cmake_parse_arguments(T "" "LABEL;TIMEOUT" "SOURCES" ${ARGN})
    add_executable(${name} ${T_SOURCES})
    target_link_libraries(${name} PRIVATE cfutures_static PkgConfig::CMOCKA cf_flags)
    target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
    cf_test_entry(${name} COMMAND ${name} LABEL ${T_LABEL} TIMEOUT ${T_TIMEOUT})
endfunction()

# cf_test_entry(name COMMAND program [args...] LABEL l [TIMEOUT s])
# One more CTest entry running a test program (or a wrapper of one) with
# arguments, with the environment and properties cf_test gives its own.
function(cf_test_entry name)
    cmake_parse_arguments(T "" "LABEL;TIMEOUT" "COMMAND" ${ARGN})
    if(NOT T_TIMEOUT)
        set(T_TIMEOUT 120)
    endif()
    add_test(NAME ${name} COMMAND ${T_COMMAND})
    set(env "CF_EXAMPLES_DIR=${PROJECT_BINARY_DIR}/examples;CF_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
    if(TARGET cf-broker AND TARGET cf-worker)
        list(APPEND env "CF_BROKER_BIN=$<TARGET_FILE:cf-broker>" "CF_WORKER_BIN=$<TARGET_FILE:cf-worker>"
                        "CF_TASKS_LIB=$<TARGET_FILE:example_tasks>")
    endif()
    if(TARGET cf_routing_tasks)
        list(APPEND env "CF_ROUTING_TASKS_LIB=$<TARGET_FILE:cf_routing_tasks>")
    endif()
    if(TARGET cf-admin AND TARGET cf-keygen)
        list(APPEND env "CF_ADMIN_BIN=$<TARGET_FILE:cf-admin>" "CF_KEYGEN_BIN=$<TARGET_FILE:cf-keygen>")
    endif()
    set_tests_properties(${name} PROPERTIES TIMEOUT ${T_TIMEOUT} LABELS ${T_LABEL}
        ENVIRONMENT "${env}" SKIP_RETURN_CODE 77)
endfunction()
