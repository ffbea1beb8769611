"""What the target's compression is (detection), and the CLI names that build one."""
