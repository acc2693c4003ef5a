// etcdload: the etcd side of bench/cluster.py's throughput windows, with etcd's own Go client
// (go.etcd.io/etcd/client/v3) over its v3 gRPC API.
//
// The workload is the one bench/cluster.py runs against Orbital Raft: -clients concurrent
// clients, each with one Put outstanding at a time (the next starts when the previous one is
// acknowledged), each on its own key, values of -value-bytes bytes. Every client first
// completes one Put (as bench/cluster.py's clients do: connected, the leader found); then
// the clock starts: -warmup seconds, then -seconds measured ones. A Put that starts inside the measured window counts; its
// latency is from the call to its acknowledgement. The clients share -conns gRPC connections
// (clientv3.Client values), client i the (i mod conns)-th.
//
// It prints one JSON object: writes, writes/s, latency p50/p99/max (nearest rank, ms), errors
// by message, and the CPU time this process used (getrusage: user + system) from the start
// of the measured window until the last client finished, also per 1,000 writes, so the
// reader sees what the load generator itself costs on a shared machine.
//
// It is a benchmark tool (built by bench/cluster.py with the local Go toolchain), not part
// of the product.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

type result struct {
	Clients           int            `json:"clients"`
	Conns             int            `json:"conns"`
	Seconds           float64        `json:"seconds"`
	Writes            int            `json:"writes"`
	WritesPerS        float64        `json:"writes_per_s"`
	P50Ms             float64        `json:"p50_ms"`
	P99Ms             float64        `json:"p99_ms"`
	MaxMs             float64        `json:"max_ms"`
	Errors            map[string]int `json:"errors"`
	CPUS              float64        `json:"client_cpu_s"`
	CPUSPer1000Writes float64        `json:"client_cpu_s_per_1000_writes"`
	ValueBytes        int            `json:"value_bytes"`
	Endpoints         []string       `json:"endpoints"`
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// percentile is the nearest-rank percentile of sorted values (0 for none), as bench/cluster.py.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(float64(len(sorted)) * q / 100))
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "etcdload: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated client URLs (host:port)")
	clients := flag.Int("clients", 1, "concurrent clients, one Put outstanding each")
	conns := flag.Int("conns", 0, "gRPC connections shared by the clients (0: one per client)")
	warmup := flag.Float64("warmup", 1.0, "seconds before the measured window")
	seconds := flag.Float64("seconds", 10.0, "measured seconds")
	valueBytes := flag.Int("value-bytes", 100, "bytes per value")
	timeout := flag.Duration("timeout", 10*time.Second, "per-Put timeout")
	prefix := flag.String("key-prefix", "k", "key prefix (client i writes PREFIX-i)")
	flag.Parse()
	if *endpoints == "" || *clients < 1 || *seconds <= 0 || *warmup < 0 || *valueBytes < 0 {
		fail("need -endpoints, -clients >= 1, -seconds > 0, -warmup >= 0, -value-bytes >= 0")
	}
	eps := strings.Split(*endpoints, ",")
	if *conns <= 0 || *conns > *clients {
		*conns = *clients
	}
	kvs := make([]*clientv3.Client, *conns)
	for i := range kvs {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   eps,
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			fail("connecting to %v: %v", eps, err)
		}
		defer c.Close()
		kvs[i] = c
	}

	var (
		mu        sync.Mutex
		latencies []time.Duration
		errors    = map[string]int{}
		wg        sync.WaitGroup
		ready     sync.WaitGroup
		cpuOnce   sync.Once
		cpuStart  float64
		start     = make(chan struct{})
		// the clock, set once every client completed its first Put (read after <-start)
		measureFrom, end time.Time
	)
	put := func(kv *clientv3.Client, key string, n int) error {
		value := fmt.Sprintf("%d:", n)
		if pad := *valueBytes - len(value); pad > 0 {
			value += strings.Repeat("x", pad)
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		_, err := kv.Put(ctx, key, value)
		return err
	}
	countError := func(err error) {
		mu.Lock()
		errors[err.Error()]++
		mu.Unlock()
	}
	// the CPU clock starts with the measured window (the first client to cross it reads it)
	markWindow := func() { cpuOnce.Do(func() { cpuStart = cpuSeconds() }) }
	ready.Add(*clients)
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			kv := kvs[i%*conns]
			key := fmt.Sprintf("%s-%d", *prefix, i)
			own := make([]time.Duration, 0, 4096)
			deadline := time.Now().Add(30 * time.Second)
			for {
				err := put(kv, key, 0)
				if err == nil || time.Now().After(deadline) {
					break
				}
				countError(err)
				time.Sleep(10 * time.Millisecond)
			}
			ready.Done()
			<-start
			for n := 1; ; n++ {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				if !t0.Before(measureFrom) {
					markWindow()
				}
				if err := put(kv, key, n); err != nil {
					countError(err)
					continue
				}
				if !t0.Before(measureFrom) {
					own = append(own, time.Since(t0))
				}
			}
			mu.Lock()
			latencies = append(latencies, own...)
			mu.Unlock()
		}(i)
	}
	ready.Wait()
	measureFrom = time.Now().Add(time.Duration(*warmup * float64(time.Second)))
	end = measureFrom.Add(time.Duration(*seconds * float64(time.Second)))
	close(start)
	wg.Wait()
	markWindow()
	cpu := cpuSeconds() - cpuStart
	sort.Slice(latencies, func(a, b int) bool { return latencies[a] < latencies[b] })
	out := result{
		Clients:    *clients,
		Conns:      *conns,
		Seconds:    *seconds,
		Writes:     len(latencies),
		WritesPerS: float64(int(float64(len(latencies))/(*seconds)*10)) / 10,
		P50Ms:      ms(percentile(latencies, 50)),
		P99Ms:      ms(percentile(latencies, 99)),
		Errors:     errors,
		CPUS:       float64(int(cpu*1000)) / 1000,
		ValueBytes: *valueBytes,
		Endpoints:  eps,
	}
	if len(latencies) > 0 {
		out.MaxMs = ms(latencies[len(latencies)-1])
		out.CPUSPer1000Writes = float64(int(cpu/float64(len(latencies))*1000*10000)) / 10000
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fail("writing the result: %v", err)
	}
}
