#!/bin/sh
# Makes a self-signed development pair (localhost, 127.0.0.1, ::1) in this
# folder: dev-cert.pem and dev-key.pem.  The key is never committed.
#   sh certs/make-dev-cert.sh && twistd -n omega-ws --cert certs/dev-cert.pem --key certs/dev-key.pem
set -eu
exec "${PYTHON:-python3}" -m omega_ws.devcert "$(dirname "$0")"
