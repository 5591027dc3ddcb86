"""Replication: the Raft log shared by the nodes of a cluster, and the links between them."""
