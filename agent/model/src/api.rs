//! Types of the coordinator's admin API (status, snapshots, restore orders), shared by the service and its CLI.
