#!/usr/bin/env bash
#  docker/check-runtime-deps.sh [BINARY] [DOCKERFILE]
#
#  Checks that the final stage of docker/Dockerfile installs every Debian
#  package the wsrouter binary needs at run time. Runs on a Debian 12 host
#  where the binary was built (or in the Dockerfile's build stage):
#
#    1. reads the packages of the final stage's `apt-get install`;
#    2. maps each shared library that `ldd BINARY` resolves to its package
#       with `dpkg -S`;
#    3. the libraries the binary links directly (ELF NEEDED) must come from
#       a listed package or from the base image (Priority: required, e.g.
#       libc6); every other library must come from the dependency closure
#       (Depends/Pre-Depends, per `apt-cache depends`) of the listed
#       packages plus the base image.
#
#  Exit 0 when all are covered, 1 when one is missing (or ldd finds a
#  library "not found"), 2 on a usage or environment error. Listed packages
#  that the binary does not need are reported, not failed (e.g. hiredis and
#  NATS while nothing calls them: the linker drops them with --as-needed).
#  Defaults: BINARY=build/wsrouter, DOCKERFILE=docker/Dockerfile (from the
#  repository root).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build/wsrouter}
dockerfile=${2:-$root/docker/Dockerfile}

die () { echo "check-runtime-deps: $*" >&2; exit 2; }
[ -x "$bin" ] || die "no binary at $bin (build it: scripts/build)"
[ -r "$dockerfile" ] || die "no Dockerfile at $dockerfile"
for tool in ldd readelf dpkg apt-cache awk; do
    command -v "$tool" >/dev/null || die "needs $tool"
done

#  --- 1. packages of the final stage ----------------------------------------
#  From the last FROM on: join continuation lines, take the `apt-get install`
#  command up to the next && / ; / |, keep the words that are not options.
listed=$(awk '
    /^[[:space:]]*FROM[[:space:]]/ { text = "" }
    { text = text "\n" $0 }
    END {
        gsub(/\\[[:space:]]*\n/, " ", text)
        n = split(text, lines, "\n")
        for (i = 1; i <= n; i++) {
            line = lines[i]
            if (line !~ /^[[:space:]]*RUN[[:space:]]/) continue
            while ((p = index(line, "apt-get install")) > 0) {
                rest = substr(line, p + length("apt-get install"))
                m = match(rest, /&&|;|\|/)
                cmd = m ? substr(rest, 1, m - 1) : rest
                k = split(cmd, words, /[[:space:]]+/)
                for (j = 1; j <= k; j++)
                    if (words[j] != "" && words[j] !~ /^-/) print words[j]
                line = rest
            }
        }
    }' "$dockerfile" | sort -u)
[ -n "$listed" ] || die "no apt-get install found in the final stage of $dockerfile"
# shellcheck disable=SC2086
known=$(apt-cache show --no-all-versions $listed 2>/dev/null | awk '/^Package: / { print $2 }' | sort -u)
unknown=$(comm -23 <(echo "$listed") <(echo "$known"))
if [ -n "$unknown" ]; then
    for p in $unknown; do
        echo "MISSING  $p: listed in the Dockerfile but no such package in apt's index (apt-get update?)"
    done
    exit 1
fi

#  --- dependency closures (Depends + Pre-Depends; the first of alternatives;
#  the first provider of a virtual package), as apt would install them -----
#  One `apt-cache depends --recurse` gives the graph ("package dependency"
#  lines); closure ROOTS... walks it.
graph () {
    apt-cache depends --recurse --important "$@" 2>/dev/null | awk '
        /^[^ ]/ { pkg = $1; alt = 0; want_provider = 0; next }
        /^ [ |](Pre)?Depends: / {
            take = !alt                       # not a later alternative
            alt = substr($0, 2, 1) == "|"     # a "|" line opens or continues a group
            want_provider = 0
            if (!take) next
            if ($2 ~ /^</) { want_provider = 1; next }
            print pkg, $2; next
        }
        /^    [^ ]/ { if (want_provider) { print pkg, $1; want_provider = 0 } next }
        { want_provider = 0 }' | sed 's/:[a-z0-9]*$//' | sort -u
}
closure () {
    awk -v roots="$*" '
        { dep[$1] = dep[$1] " " $2 }
        END {
            n = split(roots, q, " ")
            for (i = 1; i <= n; i++) seen[q[i]] = 1
            for (i = 1; i <= n; i++) {
                m = split(dep[q[i]], d, " ")
                for (j = 1; j <= m; j++)
                    if (!(d[j] in seen)) { seen[d[j]] = 1; q[++n] = d[j] }
            }
            for (p in seen) print p
        }' <<<"$edges" | sort
}

#  The base image (debian:bookworm-slim, a debootstrap minbase): packages
#  that are Essential or Priority: required, and what they depend on.
mapfile -t required < <(apt-cache dumpavail | awk '
    /^Package: / { p = $2 }
    /^Priority: required/ || /^Essential: yes/ { print p }' | sort -u)
[ ${#required[@]} -gt 0 ] || die "apt knows no package index (run apt-get update)"
# shellcheck disable=SC2086
edges=$(graph $listed "${required[@]}")
base=$(closure "${required[@]}")
# shellcheck disable=SC2086
image=$(closure $listed "${required[@]}")

#  --- 2. libraries of the binary and their packages ------------------------
candidates () {                   # a path and its /usr-merge twins
    local path=$1 real
    real=$(readlink -f "$path")
    printf '%s\n' "$path" "$real" "/usr$path" "/usr$real" "${path#/usr}" "${real#/usr}" \
        | awk 'NF && !seen[$0]++'
}
owners=""                         # "path package" for every candidate dpkg knows
pkg_of () {
    local cand
    while read -r cand; do
        awk -v c="$cand" '$1 == c { print $2; found = 1; exit } END { exit !found }' \
            <<<"$owners" && return 0
    done < <(candidates "$1")
    return 1
}

ldd_out=$(ldd "$bin") || die "ldd failed on $bin"
if grep -q 'not found' <<<"$ldd_out"; then
    echo "MISSING  on this host already:"; grep 'not found' <<<"$ldd_out"; exit 1
fi
needed=$(readelf -d "$bin" | awk -F'[][]' '/\(NEEDED\)/ { print $2 }')
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 } $1 ~ /^\// { n = split($1, a, "/"); print a[n], $1 }' <<<"$ldd_out")
#  One dpkg -S for all candidates: "package:arch: path" lines (some may name
#  two packages, "a, b: path": take the first).
mapfile -t all_candidates < <(while read -r _ path; do candidates "$path"; done <<<"$libs" | sort -u)
owners=$(dpkg -S "${all_candidates[@]}" 2>/dev/null \
    | awk '{ i = index($0, ": "); pkg = substr($0, 1, i - 1); path = substr($0, i + 2)
             sub(/,.*/, "", pkg); sub(/:.*/, "", pkg); print path, pkg }' || true)

in_set () { grep -qxF "$1" <<<"$2"; }
fail=0 used_direct=""
printf '%-28s %-22s %s\n' "library" "package" "comes with"
while read -r soname path; do
    pkg=$(pkg_of "$path") || { echo "MISSING  $soname ($path): no Debian package owns it"; fail=1; continue; }
    if in_set "$soname" "$needed"; then
        used_direct+="$pkg"$'\n'
        if in_set "$pkg" "$listed"; then how="listed (direct)"
        elif in_set "$pkg" "$base"; then how="base image (direct)"
        else how=""; fi
    else
        if in_set "$pkg" "$listed"; then how="listed"
        elif in_set "$pkg" "$base"; then how="base image"
        elif in_set "$pkg" "$image"; then how="dependency"
        else how=""; fi
    fi
    if [ -z "$how" ]; then
        printf '%-28s %-22s %s\n' "$soname" "$pkg" "MISSING from the final stage"; fail=1
    else
        printf '%-28s %-22s %s\n' "$soname" "$pkg" "$how"
    fi
done <<<"$libs"

#  --- 3. listed packages the binary does not need (report only) ------------
# shellcheck disable=SC2046
wanted=$(closure $(sort -u <<<"$used_direct"))
for p in $listed; do
    in_set "$p" "$wanted" && continue
    case $p in
        ca-certificates) note="data for libcurl's TLS, no library" ;;
        *) note="not linked by this binary (yet): kept for what the image runs" ;;
    esac
    echo "note     $p: $note"
done

if [ $fail -ne 0 ]; then
    echo "check-runtime-deps: FAILED: add the missing package(s) to the final stage of $dockerfile"
    exit 1
fi
echo "check-runtime-deps: OK: $(wc -l <<<"$listed") packages listed in the final stage cover every library of $bin"
