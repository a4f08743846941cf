#!/usr/bin/env bash
# Runs a real Keystone (the `keystone` package from PyPI) on SQLite under gunicorn, as
# shared/reference/keystone-samples/README describes, for the tests that validate its
# tokens. Everything lives under DIR; nothing is written to /etc.
#
# usage: keystone_server.sh VENV DIR PORT PROVIDER(fernet|jws) ADMIN_PASSWORD
set -euo pipefail
venv=$1 dir=$2 port=$3 provider=$4 password=$5
mkdir -p "$dir"/{fernet,receipts,credential,jws/private,jws/public}
cat > "$dir/keystone.conf" <<CONF
[DEFAULT]
log_file = $dir/keystone.log
[database]
connection = sqlite:///$dir/keystone.db
[token]
provider = $provider
[fernet_tokens]
key_repository = $dir/fernet
[fernet_receipts]
key_repository = $dir/receipts
[credential]
key_repository = $dir/credential
[jwt_tokens]
jws_private_key_repository = $dir/jws/private
jws_public_key_repository = $dir/jws/public
CONF
manage() { "$venv/bin/keystone-manage" --config-dir "$dir" "$@" >>"$dir/manage.log" 2>&1; }
manage db_sync
manage fernet_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
manage credential_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
if [ "$provider" = jws ]; then
    # create_jws_keypair writes private.pem and public.pem into the current directory.
    (cd "$dir/jws/private" && manage create_jws_keypair --force --keystone-user "$(id -un)" --keystone-group "$(id -gn)")
    mv "$dir/jws/private/public.pem" "$dir/jws/public/public.pem"
fi
manage bootstrap --bootstrap-password "$password" \
    --bootstrap-public-url "http://127.0.0.1:$port/v3" --bootstrap-region-id RegionOne
cat > "$dir/wsgi_app.py" <<PY
import sys
sys.argv = sys.argv[:1]
from keystone.server import wsgi
application = wsgi.initialize_public_application()
PY
cd "$dir"
export OS_KEYSTONE_CONFIG_DIR="$dir"
exec "$venv/bin/gunicorn" --bind "127.0.0.1:$port" --workers 1 --chdir "$dir" wsgi_app:application
