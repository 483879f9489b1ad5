# SPDX-License-Identifier: MIT
#
# Run by `cmake --install` (and cpack) for the daemons component: writes the
# systemd units for the prefix being installed to and installs them with the
# EnvironmentFile examples. CF_SOURCE_DIR, CF_BINARY_DIR and
# CF_INSTALL_BINDIR come from an install(CODE) just before.
#
# Prefix /usr (a package): units in /usr/lib/systemd/system, flags in
# /etc/default. Any other prefix: PREFIX/lib/systemd/system and
# PREFIX/etc/default, and the units name that file.

set(_prefix "${CMAKE_INSTALL_PREFIX}")
if(_prefix STREQUAL "/usr")
    set(CF_ETC_DIR /etc)
else()
    set(CF_ETC_DIR "${_prefix}/etc")
endif()
set(CF_BIN_DIR "${_prefix}/${CF_INSTALL_BINDIR}")
foreach(_unit cf-broker.service cf-worker@.service)
    configure_file(${CF_SOURCE_DIR}/dist/systemd/${_unit}.in
                   ${CF_BINARY_DIR}/dist/systemd/${_unit} @ONLY)
    file(INSTALL ${CF_BINARY_DIR}/dist/systemd/${_unit}
         DESTINATION "${_prefix}/lib/systemd/system"
         PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
endforeach()
file(INSTALL ${CF_SOURCE_DIR}/dist/default/cf-broker ${CF_SOURCE_DIR}/dist/default/cf-worker
     DESTINATION "${CF_ETC_DIR}/default"
     PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
