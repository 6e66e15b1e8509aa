# Sourced by scripts/setup.sh and scripts/sqlite-source.sh: a PRIVATE apt
# configuration under a directory of .local, for downloading from Debian's
# archive without using or changing the system's sources, lists, caches or
# installed packages.
#
#   apt_private_config DIR "deb[-src] ... URL SUITE main"
#
# makes DIR's layout, an empty dpkg status (the configuration only
# downloads; it never resolves against what the system has installed), a
# sources.list of that one line (signed by Debian's archive keyring), and
# sets the array `apt_private` of options for `apt-get "${apt_private[@]}"`.
# Needs the caller's `die`.

apt_private_config() {
    local dir=$1 line=$2
    mkdir -p "$dir/etc/sources.list.d" "$dir/etc/preferences.d" \
        "$dir/state/lists/partial" "$dir/cache/archives/partial"
    : >"$dir/state/status"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -r "$keyring" ] || die "$keyring is missing; install the debian-archive-keyring package"
    echo "${line/ http/ [signed-by=$keyring] http}" >"$dir/etc/sources.list"
    apt_private=(
        -o "Dir::State=$dir/state"
        -o "Dir::State::status=$dir/state/status"
        -o "Dir::Cache=$dir/cache"
        -o "Dir::Etc::SourceList=$dir/etc/sources.list"
        -o "Dir::Etc::SourceParts=$dir/etc/sources.list.d"
        -o "Dir::Etc::PreferencesParts=$dir/etc/preferences.d"
        -o "APT::Sandbox::User=root"
        -o "Debug::NoLocking=1"
        -o "Acquire::Languages=none"
        -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
    )
}
