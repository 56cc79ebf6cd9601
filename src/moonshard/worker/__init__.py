"""Workers: each owns the VMs of its tenants, with one ordered mailbox per tenant."""
