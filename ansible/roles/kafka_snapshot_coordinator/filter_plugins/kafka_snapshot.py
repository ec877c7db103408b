"""Filters of the kafka_snapshot_agent and kafka_snapshot_coordinator roles.
Each role ships its own copy of this file, so that either can be used
without the other (Galaxy, another repository); tests/ops.sh checks that
the two copies are identical: edit the agent role's and copy it over.

- ``kafka_properties``: a Kafka ``server.properties`` text -> dict.
- ``kafka_log_dirs``: that dict -> the broker's log dirs, as the agent reads
  them (``log.dirs``, else ``log.dir``, else Kafka's default
  ``/tmp/kafka-logs``; plus ``metadata.log.dir``).
- ``kafka_node_id``: that dict -> ``node.id`` (KRaft) or ``broker.id``.
- ``kafka_node_role``: that dict -> ``broker``, ``controller`` or
  ``combined`` from ``process.roles`` (absent: a ZooKeeper-mode broker).
- ``kafka_snapshot_toml``: a dict of sections -> TOML text; ``None`` values
  are left out, so an inventory can drop a key by setting it to null.
"""

import json
import math

from ansible.errors import AnsibleFilterError


def kafka_properties(text):
    """Parses Java properties as Kafka reads them: ``#``/``!`` comments,
    ``key=value``, ``key: value`` or ``key value``, backslash line
    continuations and escapes."""
    props = {}
    logical = ""
    for raw in str(text).splitlines():
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        # An odd number of trailing backslashes continues the line.
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            logical += line[:-1]
            continue
        logical += line
        key, value = _split_property(logical)
        props[key] = value
        logical = ""
    if logical:
        key, value = _split_property(logical)
        props[key] = value
    return props


def _split_property(line):
    key = []
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            key.append(_unescape(line[i + 1]))
            i += 2
            continue
        if c in "=: \t\f":
            break
        key.append(c)
        i += 1
    rest = line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    value = []
    j = 0
    while j < len(rest):
        if rest[j] == "\\" and j + 1 < len(rest):
            value.append(_unescape(rest[j + 1]))
            j += 2
            continue
        value.append(rest[j])
        j += 1
    return "".join(key), "".join(value)


def _unescape(c):
    return {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(c, c)


def kafka_log_dirs(props):
    dirs_text = props.get("log.dirs") or props.get("log.dir") or "/tmp/kafka-logs"
    dirs = [d.strip() for d in dirs_text.split(",") if d.strip()]
    meta = (props.get("metadata.log.dir") or "").strip()
    if meta and meta not in dirs:
        dirs.append(meta)
    for d in dirs:
        if not d.startswith("/"):
            raise AnsibleFilterError(
                "log dir %r in server.properties is not an absolute path" % d
            )
    return [d.rstrip("/") or "/" for d in dirs]


def kafka_node_id(props):
    for key in ("node.id", "broker.id"):
        value = (props.get(key) or "").strip()
        if value:
            try:
                node = int(value)
            except ValueError:
                raise AnsibleFilterError("%s=%r in server.properties is not a number" % (key, value))
            if node < 0:
                raise AnsibleFilterError(
                    "%s=%d in server.properties: the id is generated at first start; "
                    "set kafka_snapshot_agent_broker_id for this host" % (key, node)
                )
            return node
    raise AnsibleFilterError(
        "server.properties sets neither node.id nor broker.id; "
        "set kafka_snapshot_agent_broker_id for this host"
    )


def kafka_node_role(props):
    roles = [r.strip() for r in (props.get("process.roles") or "").split(",") if r.strip()]
    unknown = [r for r in roles if r not in ("broker", "controller")]
    if unknown:
        raise AnsibleFilterError(
            "process.roles=%r in server.properties: unknown role %r (broker, controller)"
            % (props.get("process.roles"), unknown[0])
        )
    if not roles or roles == ["broker"]:
        return "broker"
    if set(roles) == {"controller"}:
        return "controller"
    return "combined"


def _toml_key(key):
    key = str(key)
    if key and all(c.isalnum() or c in "-_" for c in key) and key.isascii():
        return key
    return _toml_string(key)


def _toml_string(s):
    # JSON's escapes are valid in TOML basic strings; ensure_ascii=False
    # keeps characters outside the BMP (JSON would use surrogate pairs,
    # which TOML rejects).
    return json.dumps(str(s), ensure_ascii=False)


def _toml_value(v, where):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise AnsibleFilterError("%s: %r has no TOML form" % (where, v))
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x, where) for x in v) + "]"
    raise AnsibleFilterError("%s: cannot write %r as a TOML value" % (where, v))


def _is_table_array(v):
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def _emit_table(path, table, out):
    scalars = []
    tables = []
    arrays = []
    for k, v in table.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        elif _is_table_array(v):
            arrays.append((k, v))
        else:
            scalars.append((k, v))
    dotted = ".".join(_toml_key(p) for p in path)
    if path:
        if out:
            out.append("")
        out.append("[%s]" % dotted)
    for k, v in scalars:
        out.append("%s = %s" % (_toml_key(k), _toml_value(v, dotted + "." + str(k) if dotted else k)))
    for k, v in tables:
        _emit_table(path + [k], v, out)
    for k, items in arrays:
        for item in items:
            out.append("")
            out.append("[[%s]]" % ".".join(_toml_key(p) for p in path + [k]))
            sub = []
            _emit_table([], item, sub)
            for line in sub:
                if line.startswith("["):
                    raise AnsibleFilterError(
                        "%s: tables inside an array of tables are not supported" % k
                    )
                out.append(line)


def kafka_snapshot_toml(sections):
    if not isinstance(sections, dict):
        raise AnsibleFilterError("kafka_snapshot_toml expects a dict of sections")
    out = []
    _emit_table([], sections, out)
    return "\n".join(out) + "\n"


class FilterModule(object):
    def filters(self):
        return {
            "kafka_properties": kafka_properties,
            "kafka_log_dirs": kafka_log_dirs,
            "kafka_node_id": kafka_node_id,
            "kafka_node_role": kafka_node_role,
            "kafka_snapshot_toml": kafka_snapshot_toml,
        }
