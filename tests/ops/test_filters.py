"""Unit tests of ansible/roles/kafka_snapshot_agent/filter_plugins, run by
tests/ops.sh with the venv's Python (the plugin imports ansible)."""

import pathlib
import sys
import tomllib
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ansible/roles/kafka_snapshot_agent/filter_plugins"))

from ansible.errors import AnsibleFilterError  # noqa: E402
from kafka_snapshot import (  # noqa: E402
    kafka_log_dirs,
    kafka_node_id,
    kafka_node_role,
    kafka_properties,
    kafka_snapshot_toml,
)


class Properties(unittest.TestCase):
    def test_kraft_broker(self):
        p = kafka_properties(
            "# comment\n! also a comment\n\nprocess.roles=broker\nnode.id = 4\n"
            "log.dirs=/data/d1/kafka-logs,\\\n    /data/d2/kafka-logs\n"
            "metadata.log.dir: /data/meta\nlisteners PLAINTEXT://:9092\n"
        )
        self.assertEqual(p["node.id"], "4")
        self.assertEqual(p["listeners"], "PLAINTEXT://:9092")
        self.assertEqual(kafka_node_id(p), 4)
        # The metadata log dir is a log dir of its own, as the agent sees it.
        self.assertEqual(
            kafka_log_dirs(p), ["/data/d1/kafka-logs", "/data/d2/kafka-logs", "/data/meta"]
        )

    def test_zookeeper_era_broker_and_defaults(self):
        p = kafka_properties("broker.id=7\nlog.dir=/var/lib/kafka/\n")
        self.assertEqual(kafka_node_id(p), 7)
        self.assertEqual(kafka_log_dirs(p), ["/var/lib/kafka"])
        # log.dirs wins over log.dir; Kafka's default without either.
        self.assertEqual(kafka_log_dirs({"log.dirs": "/a", "log.dir": "/b"}), ["/a"])
        self.assertEqual(kafka_log_dirs({}), ["/tmp/kafka-logs"])
        # The metadata dir is not listed twice.
        self.assertEqual(kafka_log_dirs({"log.dirs": "/a,/b", "metadata.log.dir": "/a"}), ["/a", "/b"])

    def test_node_roles(self):
        self.assertEqual(kafka_node_role({"process.roles": "broker"}), "broker")
        self.assertEqual(kafka_node_role({"process.roles": "controller"}), "controller")
        self.assertEqual(kafka_node_role({"process.roles": " broker , controller"}), "combined")
        self.assertEqual(kafka_node_role({"process.roles": "controller,broker"}), "combined")
        # ZooKeeper mode: no process.roles.
        self.assertEqual(kafka_node_role({"broker.id": "1"}), "broker")
        with self.assertRaisesRegex(AnsibleFilterError, "unknown role 'voter'"):
            kafka_node_role({"process.roles": "controller,voter"})

    def test_escapes_and_separators(self):
        p = kafka_properties("a\\:b=c\\=d\nspaced   =  v  \nempty=\n")
        self.assertEqual(p["a:b"], "c=d")
        self.assertEqual(p["spaced"], "v  ")
        self.assertEqual(p["empty"], "")

    def test_refusals_name_the_fix(self):
        with self.assertRaisesRegex(AnsibleFilterError, "kafka_snapshot_agent_broker_id"):
            kafka_node_id({"broker.id": "-1"})
        with self.assertRaisesRegex(AnsibleFilterError, "neither node.id nor broker.id"):
            kafka_node_id({})
        with self.assertRaisesRegex(AnsibleFilterError, "not a number"):
            kafka_node_id({"node.id": "two"})
        with self.assertRaisesRegex(AnsibleFilterError, "not an absolute path"):
            kafka_log_dirs({"log.dirs": "/a,kafka-logs"})


class Toml(unittest.TestCase):
    def test_round_trips_through_a_toml_parser(self):
        sections = {
            "server": {"listen": "0.0.0.0:9640", "tls_cert": None, "port": 9640, "on": True},
            "storage": {
                "url": "s3://b/p",
                "s3": {"endpoint": "http://127.0.0.1:9000", "part_size": "8MiB"},
            },
            "kafka": {"bootstrap_servers": ["a:9092", "b:9092"], "ratio": 0.5},
            "text": {"quote": 'say "hi"\\ \n\t', "unicode": "caf\u00e9 \U0001F600", "odd key": 1},
            "empty": {},
            "agents": [{"broker": 2, "token_sha256": "ab"}, {"broker": 1, "token_sha256": "cd"}],
        }
        text = kafka_snapshot_toml(sections)
        parsed = tomllib.loads(text)
        expected = dict(sections)
        expected["server"] = {k: v for k, v in sections["server"].items() if v is not None}
        self.assertEqual(parsed, expected)
        self.assertNotIn("tls_cert", text)

    def test_refuses_what_toml_cannot_say(self):
        with self.assertRaises(AnsibleFilterError):
            kafka_snapshot_toml({"a": {"b": float("nan")}})
        with self.assertRaises(AnsibleFilterError):
            kafka_snapshot_toml({"a": {"b": object()}})
        with self.assertRaises(AnsibleFilterError):
            kafka_snapshot_toml({"agents": [{"nested": {"x": 1}}]})


if __name__ == "__main__":
    unittest.main()
