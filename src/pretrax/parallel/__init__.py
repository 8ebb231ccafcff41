"""Device mesh and the logical-to-mesh sharding rules."""
