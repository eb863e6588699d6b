#!/bin/sh
# make-passwords.sh PASSWORD_FILE USER[:PASSWORD]...
# Creates (or replaces) a mosquitto password file for the given users; a user without ":PASSWORD" gets a
# random one. Prints "USER PASSWORD" for each user on stdout: hand each node its own line, keep admin's.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 PASSWORD_FILE USER[:PASSWORD]..." >&2; exit 2; }
file=$1
shift
umask 077
tmp=$(mktemp "$file.XXXXXX")
trap 'rm -f "$tmp"' EXIT
for entry in "$@"; do
    user=${entry%%:*}
    case $entry in *:*) password=${entry#*:} ;; *) password=$(openssl rand -hex 16) ;; esac
    case $user in
        ''|*[!A-Za-z0-9_.-]*) echo "$0: invalid user name '$user' (letters, digits, _ . - only)" >&2; exit 2 ;;
    esac
    mosquitto_passwd -b "$tmp" "$user" "$password"
    echo "$user $password"
done
chmod 0640 "$tmp"
mv "$tmp" "$file"
trap - EXIT
