package recipkey

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/heraldhq/herald/internal/redisq"
	"github.com/redis/rueidis"
)

// The five bookkeeping keys hash to five different slots (485, 5975, 6878, 10939 and 12588). A
// script may touch keys of several slots (allow-cross-slot-keys) only if one node serves them
// all, so on a cluster those five slots must live on one primary. ACA-Py reaches the keys by
// name through its cluster client wherever they live, so moving the slots changes nothing for it.

type slotOwner struct {
	id, host string
	port     int64
}

func (o slotOwner) addr() string { return net.JoinHostPort(o.host, strconv.FormatInt(o.port, 10)) }

// owners maps every slot of the bookkeeping keys to the primary serving it.
func owners(ctx context.Context, c rueidis.Client) (map[int]slotOwner, error) {
	ranges, err := c.Do(ctx, c.B().ClusterSlots().Build()).ToArray()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER SLOTS: %w", err)
	}
	out := map[int]slotOwner{}
	for _, rg := range ranges {
		f, err := rg.ToArray()
		if err != nil || len(f) < 3 {
			continue
		}
		lo, _ := f[0].AsInt64()
		hi, _ := f[1].AsInt64()
		node, err := f[2].ToArray()
		if err != nil || len(node) < 3 {
			continue
		}
		var o slotOwner
		o.host, _ = node[0].ToString()
		o.port, _ = node[1].AsInt64()
		o.id, _ = node[2].ToString()
		for _, k := range Keys {
			if s := int(redisq.Slot(k)); int64(s) >= lo && int64(s) <= hi {
				out[s] = o
			}
		}
	}
	return out, nil
}

// CheckPlacement returns nil on a standalone server, or on a cluster whose bookkeeping slots
// share one primary; otherwise an error that says where they are and how to move them.
func CheckPlacement(ctx context.Context, c rueidis.Client) error {
	if c.Mode() != rueidis.ClientModeCluster {
		return nil
	}
	own, err := owners(ctx, c)
	if err != nil {
		return err
	}
	nodes := map[string][]string{}
	for _, k := range Keys {
		o, ok := own[int(redisq.Slot(k))]
		if !ok {
			return fmt.Errorf("redis cluster: slot %d of %s is served by no node", redisq.Slot(k), k)
		}
		nodes[o.addr()] = append(nodes[o.addr()], fmt.Sprintf("%s (slot %d)", k, redisq.Slot(k)))
	}
	if len(nodes) == 1 {
		return nil
	}
	var where []string
	for addr, keys := range nodes {
		where = append(where, addr+": "+strings.Join(keys, ", "))
	}
	slices.Sort(where)
	return fmt.Errorf("redis cluster: the recipient-key bookkeeping keys must be served by one primary so that one script can update them, "+
		"but they are spread over %d (%s); run `herald relay --place-keys` once to move their slots to one node", len(nodes), strings.Join(where, "; "))
}

// Place moves the slots of the bookkeeping keys, with any keys in them, to the primary that
// already serves most of them, the way redis-cli --cluster reshard moves a slot (IMPORTING,
// MIGRATING, MIGRATE, SETSLOT NODE). It returns the slots it moved.
func Place(ctx context.Context, c rueidis.Client) ([]int, error) {
	if c.Mode() != rueidis.ClientModeCluster {
		return nil, nil
	}
	own, err := owners(ctx, c)
	if err != nil {
		return nil, err
	}
	count := map[string]int{}
	var target slotOwner
	for _, o := range own {
		count[o.id]++
		if count[o.id] > count[target.id] || count[o.id] == count[target.id] && o.id < target.id {
			target = o
		}
	}
	nodes := c.Nodes()
	tc, ok := nodes[target.addr()]
	if !ok {
		return nil, fmt.Errorf("no connection to %s", target.addr())
	}
	do := func(n rueidis.Client, args ...string) error {
		return n.Do(ctx, n.B().Arbitrary(args[0]).Args(args[1:]...).Build()).Error()
	}
	var moved []int
	for _, k := range Keys {
		slot := int(redisq.Slot(k))
		src := own[slot]
		if src.id == target.id || slices.Contains(moved, slot) {
			continue
		}
		sc, ok := nodes[src.addr()]
		if !ok {
			return moved, fmt.Errorf("no connection to %s", src.addr())
		}
		s := strconv.Itoa(slot)
		if err := do(tc, "CLUSTER", "SETSLOT", s, "IMPORTING", src.id); err != nil {
			return moved, fmt.Errorf("slot %d: IMPORTING on %s: %w", slot, target.addr(), err)
		}
		if err := do(sc, "CLUSTER", "SETSLOT", s, "MIGRATING", target.id); err != nil {
			return moved, fmt.Errorf("slot %d: MIGRATING on %s: %w", slot, src.addr(), err)
		}
		for {
			keys, err := sc.Do(ctx, sc.B().ClusterGetkeysinslot().Slot(int64(slot)).Count(100).Build()).AsStrSlice()
			if err != nil {
				return moved, fmt.Errorf("slot %d: GETKEYSINSLOT: %w", slot, err)
			}
			if len(keys) == 0 {
				break
			}
			args := append([]string{"MIGRATE", target.host, strconv.FormatInt(target.port, 10), "", "0", "5000", "KEYS"}, keys...)
			if err := do(sc, args...); err != nil {
				return moved, fmt.Errorf("slot %d: MIGRATE: %w", slot, err)
			}
		}
		// The new owner first, then the old one, then everyone else, as redis-cli does.
		if err := do(tc, "CLUSTER", "SETSLOT", s, "NODE", target.id); err != nil {
			return moved, err
		}
		if err := do(sc, "CLUSTER", "SETSLOT", s, "NODE", target.id); err != nil {
			return moved, err
		}
		for addr, n := range nodes {
			if addr != target.addr() && addr != src.addr() {
				_ = do(n, "CLUSTER", "SETSLOT", s, "NODE", target.id)
			}
		}
		moved = append(moved, slot)
	}
	return moved, nil
}
