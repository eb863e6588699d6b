"""Network policy: the model, the ACL compiler and its nftables / iptables appliers."""
