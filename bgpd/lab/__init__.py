"""`tortie lab`: containerlab topologies realized with network namespaces, veth links and processes."""
