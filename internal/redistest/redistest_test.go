package redistest

import (
	"strings"
	"testing"
)

func TestStandaloneStopStart(t *testing.T) {
	s := Standalone(t)
	if _, err := Do(s.Addr(), "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if v, _ := Do(s.Addr(), "GET", "k"); v != "v" {
		t.Fatalf("GET = %q", v)
	}
	s.Stop()
	if _, err := Do(s.Addr(), "PING"); err == nil {
		t.Fatal("a stopped server answered")
	}
	s.Start()
	if v, err := Do(s.Addr(), "PING"); err != nil || v != "PONG" {
		t.Fatalf("after restart: %q %v", v, err)
	}
}

func TestCluster(t *testing.T) {
	c := Cluster(t, 3)
	if len(c.Addrs()) != 3 {
		t.Fatalf("addrs %v", c.Addrs())
	}
	info, err := Do(c.Addrs()[1], "CLUSTER", "INFO")
	if err != nil || !strings.Contains(info, "cluster_state:ok") {
		t.Fatalf("cluster info: %v %s", err, info)
	}
	a, _ := Do(c.Addrs()[0], "CLUSTER", "KEYSLOT", "acapy_outbound")
	b, _ := Do(c.Addrs()[0], "CLUSTER", "KEYSLOT", "{acapy_outbound}:inflight:x")
	if a == "" || a != b {
		t.Fatalf("slots differ: %s %s", a, b)
	}
}
