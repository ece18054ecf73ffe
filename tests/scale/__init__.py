"""Scale-out: two hosts behind a real HAProxy, sharing a real redis-server (issue 10, item 9)."""
