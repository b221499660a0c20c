#!/usr/bin/env bash
# Installs Autobahn|Testsuite's `wstest` (the fuzzing client that
# tests/test_conformance.py runs against the server.testee_port endpoint)
# into its own Python 2.7 virtualenv, from PyPI only.
#
# wstest is Python 2 only, so it gets pyenv's 2.7 and a dependency set
# pinned to the last releases that install and run there (the ones
# autobahntestsuite 25.10.1 pins itself, plus their dependencies).
#
# Where: $OMEGA_WS_WSTEST_DIR, default ~/.cache/omega-ws/wstest (outside the
# checkout, so fresh clones on the same machine reuse it);
# tests/test_conformance.py looks in the same place.  Which Python 2.7:
# $OMEGA_WS_PYTHON2, default pyenv's 2.7.18.
#
# Idempotent: when the installed set matches the pins below and wstest
# starts, it does nothing (well under a second).  An interrupted install
# leaves no stamp, so the next run starts it over.
set -euo pipefail
# Python 2 must not see the project's paths (the repo's twisted/plugins
# folder would shadow Twisted).
unset PYTHONPATH PYTHONHOME

home=${HOME:-$(cd ~ && pwd)}
dest=${OMEGA_WS_WSTEST_DIR:-$home/.cache/omega-ws/wstest}
venv=$dest/venv

# Every distribution, pinned: nothing floats, so a new release on PyPI
# cannot change what CI runs.  autobahn 0.10.9 is what wstest is written
# against; [accelerate] brings ujson and wsaccel (a C extension, built
# here: it needs a C compiler), whose UTF-8 validation and masking make the
# big messages of group 9 about eight times faster (9.1-9.2: 1.2 s, 9.8 s
# without it).
requirements='autobahntestsuite==25.10.1
autobahn[accelerate,twisted]==0.10.9
Twisted==19.10.0
txaio==2.1.0
wsaccel==0.6.6
ujson==2.0.3
zope.interface==4.6.0
incremental==16.10.1
constantly==15.1.0
Automat==22.10.0
attrs==21.4.0
hyperlink==21.0.0
idna==2.10
typing==3.10.0.0
PyHamcrest==1.10.1
six==1.16.0
pyOpenSSL==19.1.0
cryptography==3.3.2
cffi==1.15.1
pycparser==2.21
enum34==1.1.10
ipaddress==1.0.23
service-identity==18.1.0
pyasn1==0.5.1
pyasn1-modules==0.3.0
klein==17.10.0
Werkzeug==1.0.1
Jinja2==2.11.3
MarkupSafe==1.1.1
unittest2==1.1.0
linecache2==1.0.0
traceback2==1.4.0
argparse==1.4.0
setuptools==44.0.0'
stamp=$(printf '%s\n' "$requirements" | sha256sum | cut -d' ' -f1)

# Several checkouts on one machine share $dest: one installer at a time.
mkdir -p "$dest"
exec 9>"$dest/lock"
flock 9

if [ -x "$venv/bin/wstest" ] && [ "$(cat "$dest/stamp" 2>/dev/null)" = "$stamp" ] \
        && "$venv/bin/wstest" --autobahnversion >/dev/null 2>&1; then
    echo "wstest is installed: $venv/bin/wstest"
    exit 0
fi

find_python2() {
    if [ -n "${OMEGA_WS_PYTHON2:-}" ]; then
        echo "$OMEGA_WS_PYTHON2"
        return
    fi
    local pyenv_root=${PYENV_ROOT:-$home/.pyenv} candidate
    for candidate in "$pyenv_root"/versions/2.7.18/bin/python \
                     "$pyenv_root"/versions/2.7.*/bin/python \
                     "$(command -v python2.7 || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
}
python2=$(find_python2)
if [ -z "$python2" ] || ! "$python2" -c 'import sys; assert sys.version_info[:2] == (2, 7)'; then
    echo "autobahn-testsuite.sh: no Python 2.7 found (pyenv's 2.7.18, python2.7," \
         "or OMEGA_WS_PYTHON2); wstest needs one" >&2
    exit 1
fi

# wsaccel is built from source.
if ! command -v cc >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
fi

echo "installing wstest (autobahntestsuite 25.10.1, Python 2.7) into $venv"
# Built in place (virtualenv writes absolute paths into its scripts, so a
# venv cannot be built elsewhere and moved); the stamp, written last, is
# what marks it complete.
rm -rf "$venv" "$dest/stamp" "$dest/bootstrap"
pip_quiet=(--quiet --disable-pip-version-check)
export PIP_NO_PYTHON_VERSION_WARNING=1  # pip 19.2 has no such option, only this
# virtualenv 16.7 is the last that runs on Python 2, and it carries its own
# pip, setuptools and wheel for 2.7 (hence --no-download).  It goes into a
# private folder, leaving pyenv's site-packages alone.
"$python2" -m pip install "${pip_quiet[@]}" --target "$dest/bootstrap" 'virtualenv==16.7.12'
PYTHONPATH=$dest/bootstrap "$python2" -m virtualenv --quiet --no-download "$venv"
rm -rf "$dest/bootstrap"
printf '%s\n' "$requirements" > "$dest/requirements.txt"
"$venv/bin/python" -m pip install "${pip_quiet[@]}" -r "$dest/requirements.txt"
"$venv/bin/wstest" --autobahnversion >/dev/null
echo "$stamp" > "$dest/stamp"
echo "wstest installed: $venv/bin/wstest"
