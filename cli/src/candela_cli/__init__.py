"""candela: the operator's command line for a running Candela mesh (see `candela --help`)."""
