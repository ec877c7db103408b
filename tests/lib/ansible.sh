# The Python venv with ansible-core and ansible-lint that tests/ops.sh and
# tests/deployed.sh run the roles with, kept in the test cache and made
# again when tests/ops/requirements.txt changes. Debian's own python3: the
# venv outlives pyenv shims and the like. Source it, then call
# ansible_venv_setup: sets VENV to the venv's dir and puts it first on PATH.

ansible_venv_setup() {
    local cache=/var/cache/kafka-snapshot-tests
    VENV=$cache/ops-venv
    local venv=$VENV
    if ! cmp -s tests/ops/requirements.txt "$venv/requirements.txt"; then
        echo "creating $venv (ansible-core, ansible-lint)"
        rm -rf "$venv"
        mkdir -p "$cache"
        /usr/bin/python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/ops/requirements.txt
        cp tests/ops/requirements.txt "$venv/requirements.txt"
    fi
    export PATH="$venv/bin:$PATH"
}
