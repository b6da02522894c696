"""Running alignmixup sweeps on Ray clusters: launcher and KubeRay definitions plus a submission helper."""
