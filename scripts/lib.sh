# Shared by the krt scripts (sourced, not run): process and .env helpers.
# shellcheck shell=bash

# A process counts as alive unless it is gone or a zombie (pid 1 may not reap it at once).
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
    [ "$state" != "Z" ]
}

# True when pid $1 is a `krt serve` (a pid file may point at a reused pid).
is_krt() {
    local arg seen=0
    [ -r "/proc/$1/cmdline" ] || return 1
    while IFS= read -r -d '' arg; do
        case "$arg" in
            krt|*/krt) seen=1 ;;
            serve) [ "$seen" = 1 ] && return 0 ;;
        esac
    done <"/proc/$1/cmdline"
    return 1
}

# The value of KEY: the environment first, else the last KEY=... line of the .env file.
config_value() {
    local key="$1" value=""
    if [ -n "${!key+x}" ]; then
        printf '%s' "${!key}"
        return
    fi
    [ -f "$ENV_FILE" ] || return 0
    value="$(sed -n -E "s/^[[:space:]]*(export[[:space:]]+)?${key}[[:space:]]*=[[:space:]]*//p" "$ENV_FILE" | tail -n 1)"
    value="${value%%[[:space:]]#*}"
    value="${value%"${value##*[![:space:]]}"}"
    value="${value#[\"\']}"
    value="${value%[\"\']}"
    printf '%s' "$value"
}
