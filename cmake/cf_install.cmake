# SPDX-License-Identifier: MIT
#
# Installing and packaging. Three components, which are also the three
# Debian packages `cpack -G DEB` makes (README.md, "Packages"):
#   runtime  libcfutures.so.N                           -> libcfutures1
#   dev      header, .so link, libcfutures.a, cfutures.pc, CMake package files
#                                                       -> libcfutures-dev
#   daemons  cf-broker, cf-worker, cf-keygen, cf-admin, their man pages,
#            systemd units, /etc/default files          -> cfutures
# Everything installed is relocatable (cfutures.pc, the CMake files and the
# programs' RPATH are relative to where they are), so `cmake --install build
# --prefix ANYWHERE` works.

include(CMakePackageConfigHelpers)

install(TARGETS cfutures EXPORT cfutures-targets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime NAMELINK_COMPONENT dev
        PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev)
install(TARGETS cfutures_archive EXPORT cfutures-targets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
# The programs in an export set of their own: the dev package must not
# refer to files only the daemons package installs.
install(TARGETS ${CF_PROGRAMS} EXPORT cfutures-programs
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT daemons)

set(CF_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/cfutures)
install(EXPORT cfutures-targets NAMESPACE cfutures:: DESTINATION ${CF_CMAKE_DIR}
        COMPONENT dev)
install(EXPORT cfutures-programs NAMESPACE cfutures:: DESTINATION ${CF_CMAKE_DIR}
        COMPONENT daemons)
configure_package_config_file(cmake/cfutures-config.cmake.in cfutures-config.cmake
                              INSTALL_DESTINATION ${CF_CMAKE_DIR})
# 0.x: minor versions may break (SameMinorVersion); from 1.0 on, SameMajorVersion.
if(PROJECT_VERSION_MAJOR EQUAL 0)
    set(_cf_compat SameMinorVersion)
else()
    set(_cf_compat SameMajorVersion)
endif()
write_basic_package_version_file(cfutures-config-version.cmake
                                 COMPATIBILITY ${_cf_compat})
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/cfutures-config.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/cfutures-config-version.cmake
        DESTINATION ${CF_CMAKE_DIR} COMPONENT dev)

# cfutures.pc: the prefix is found from the file's own place (${pcfiledir}).
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
    message(FATAL_ERROR "CMAKE_INSTALL_LIBDIR must be relative for a relocatable install")
endif()
file(RELATIVE_PATH CF_PC_TO_PREFIX /root/${CMAKE_INSTALL_LIBDIR}/pkgconfig /root)
string(REGEX REPLACE "/$" "" CF_PC_TO_PREFIX "${CF_PC_TO_PREFIX}")
set(CF_PC_DL "")
if(CMAKE_DL_LIBS)
    set(CF_PC_DL "-l${CMAKE_DL_LIBS}")
endif()
configure_file(cmake/cfutures.pc.in cfutures.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/cfutures.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT dev)

# Man pages: help2man turns each program's --help and --version into a page,
# with the sections --help does not carry (exit status, signals, files,
# examples) from docs/man/PROGRAM.h2m. Generated at build time so they never
# drift from the programs.
find_program(CF_HELP2MAN help2man)
if(CF_HELP2MAN AND NOT CF_ONLY)
    set(_cf_pages "")
    foreach(program ${CF_PROGRAMS})
        set(_page ${CMAKE_CURRENT_BINARY_DIR}/man/${program}.1)
        set(_include ${CMAKE_CURRENT_SOURCE_DIR}/docs/man/${program}.h2m)
        # gzip -n: no time stamp, so the same page gives the same bytes
        # (Debian wants man pages compressed).
        add_custom_command(OUTPUT ${_page}.gz
            COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/man
            COMMAND ${CF_HELP2MAN} --no-info --section=1 --manual=cfutures
                    "--source=cfutures ${PROJECT_VERSION}" --include=${_include}
                    --output=${_page} $<TARGET_FILE:${program}>
            COMMAND gzip -9nf ${_page}
            DEPENDS ${program} ${_include}
            COMMENT "help2man ${program}.1" VERBATIM)
        list(APPEND _cf_pages ${_page}.gz)
    endforeach()
    add_custom_target(cf_man ALL DEPENDS ${_cf_pages})
    install(FILES ${_cf_pages} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1 COMPONENT daemons)
else()
    message(STATUS "help2man not found: no man pages (apt-get install help2man)")
endif()

# systemd units and their EnvironmentFiles, written at install time for the
# prefix being installed to: /usr (a package) puts the flags files in
# /etc/default, any other prefix in PREFIX/etc/default.
install(CODE "set(CF_SOURCE_DIR \"${CMAKE_CURRENT_SOURCE_DIR}\")
              set(CF_BINARY_DIR \"${CMAKE_CURRENT_BINARY_DIR}\")
              set(CF_INSTALL_BINDIR \"${CMAKE_INSTALL_BINDIR}\")"
        COMPONENT daemons)
install(SCRIPT cmake/cf_install_dist.cmake COMPONENT daemons)

set(_cf_docs share/doc/cfutures)
install(FILES LICENSE CHANGELOG.md README.md docs/operations.md docs/security.md
              docs/protocol.md
        DESTINATION ${_cf_docs} COMPONENT daemons)
install(FILES LICENSE DESTINATION share/doc/libcfutures${CF_SOVERSION} RENAME copyright
        COMPONENT runtime)
install(FILES LICENSE DESTINATION share/doc/libcfutures-dev RENAME copyright COMPONENT dev)
install(FILES LICENSE DESTINATION ${_cf_docs} RENAME copyright COMPONENT daemons)
install(FILES examples/tasks_example.c DESTINATION ${_cf_docs}/examples COMPONENT daemons)

# Debian packages: cpack -G DEB in the build directory.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME cfutures)
set(CPACK_PACKAGE_VENDOR cfutures)
set(CPACK_PACKAGE_CONTACT "cfutures maintainers <cfutures@example.org>")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY ${PROJECT_DESCRIPTION})
set(CPACK_RESOURCE_FILE_LICENSE ${CMAKE_CURRENT_SOURCE_DIR}/LICENSE)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_INSTALL_PREFIX /usr)
# Install with DESTDIR, so the prefix seen by cmake_install is /usr and the
# flags files land in /etc.
set(CPACK_SET_DESTDIR ON)
set(CPACK_COMPONENTS_ALL runtime dev daemons)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE ${PROJECT_HOMEPAGE_URL})
set(_cf_exact "libcfutures${CF_SOVERSION} (= ${PROJECT_VERSION})")

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME libcfutures${CF_SOVERSION})
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_RUNTIME_DESCRIPTION "concurrent.futures for C: the shared library
 libcfutures runs tasks registered by name on threads, on worker processes
 of this host, or on cf-worker daemons behind a cf-broker, with futures,
 map, as_completed and wait.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME libcfutures-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "${_cf_exact}, libzmq3-dev, libmsgpack-dev")
set(CPACK_DEBIAN_DEV_DESCRIPTION "concurrent.futures for C: development files
 The header cfutures.h, the static library, cfutures.pc for pkg-config and
 the CMake package (find_package(cfutures): cfutures::cfutures and
 cfutures::cfutures_static).")

set(CPACK_DEBIAN_DAEMONS_PACKAGE_NAME cfutures)
set(CPACK_DEBIAN_DAEMONS_PACKAGE_SECTION net)
# The programs use the library's CFUTURES_PRIVATE symbols: exactly this version.
set(CPACK_DEBIAN_DAEMONS_PACKAGE_DEPENDS "${_cf_exact}, libzmq5, libc6, adduser")
set(CPACK_DEBIAN_DAEMONS_PACKAGE_CONTROL_EXTRA
    ${CMAKE_CURRENT_SOURCE_DIR}/dist/debian/conffiles
    ${CMAKE_CURRENT_SOURCE_DIR}/dist/debian/postinst
    ${CMAKE_CURRENT_SOURCE_DIR}/dist/debian/prerm)
set(CPACK_DEBIAN_DAEMONS_DESCRIPTION "concurrent.futures for C: broker, worker and tools
 cf-broker hands tasks from clients to cf-worker daemons over ZeroMQ, with
 CurveZMQ encryption and key allow-lists; cf-worker runs them from task
 libraries; cf-keygen makes key pairs; cf-admin shows a running broker
 (status, watch, JSON, Prometheus metrics). systemd units included.")
include(CPack)

# The install checks (tests/install/): the exported symbols against the
# header, an install into a temporary prefix used by a C and a C++
# consumer through pkg-config and find_package, and the Debian packages.
# Not in sanitizer builds: the installed library would need the sanitizer
# runtime in every consumer.
if(BUILD_TESTING AND NOT CF_SANITIZE AND NOT CF_ONLY)
    find_package(Python3 COMPONENTS Interpreter)
    if(Python3_FOUND)
        add_test(NAME install_symbols
                 COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/tests/install/check_symbols.py
                         ${CMAKE_C_COMPILER} ${CMAKE_CURRENT_SOURCE_DIR}/include/cfutures.h
                         $<TARGET_FILE:cfutures> ${CMAKE_CURRENT_SOURCE_DIR}/cmake/cfutures.map)
        set_tests_properties(install_symbols PROPERTIES LABELS install TIMEOUT 60)
    else()
        message(WARNING "python3 not found: the install_symbols test is left out")
    endif()
    find_program(CF_CXX NAMES c++ g++ clang++)
    add_test(NAME install_consumer
             COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/tests/install/consumer.sh
                     ${CMAKE_CURRENT_BINARY_DIR} ${CMAKE_CURRENT_SOURCE_DIR}/tests/install
                     ${CMAKE_C_COMPILER} ${CF_CXX})
    add_test(NAME install_packages
             COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/tests/install/packages.sh
                     ${CMAKE_CURRENT_BINARY_DIR} ${PROJECT_VERSION} ${CF_SOVERSION})
    # Both install from the same build tree: one at a time.
    set_tests_properties(install_consumer install_packages PROPERTIES
        LABELS install TIMEOUT 240 RESOURCE_LOCK cf_install_tree)
endif()
