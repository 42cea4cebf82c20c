#!/bin/sh
# Create the secrets the compose deployment mounts (deploy/secrets/, git-ignored):
#   deploy/make-secrets.sh
# Existing files are kept (run it again after adding a name below). The
# folder is private to you (0700); the files inside are 0644 because compose
# bind-mounts each one into the containers, whose users are not you.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
chmod 700 secrets
new() {  # new NAME: 32 random bytes, hex
  [ -s "secrets/$1" ] && return 0
  openssl rand -hex 32 > "secrets/$1.tmp"
  chmod 644 "secrets/$1.tmp"
  mv "secrets/$1.tmp" "secrets/$1"
  echo "created deploy/secrets/$1"
}
new api_token          # the bootstrap admin token of /api/v1 and the API channel
new redis_password     # Redis requirepass
# the gateways' redis_url carries the password: a secret too
printf 'redis://:%s@redis:6379/0\n' "$(cat secrets/redis_password)" > secrets/redis_url.tmp
chmod 644 secrets/redis_url.tmp
mv secrets/redis_url.tmp secrets/redis_url
