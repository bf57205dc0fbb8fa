// Command quantity-oracle answers, for each input, what apimachinery's
// resource.ParseQuantity (Kubernetes v1.20.2, Debian's `kubernetes` source)
// makes of it: podshaper's differential check (scripts/quantity-differential.sh)
// compares podshaper's strict parser with these answers.
//
// Each stdin line is one input, hex-encoded (so that any bytes, newlines
// included, can be asked). Each stdout line is one answer:
//
//	ok <Value()>   ParseQuantity accepted; Value() as the kubelet reads it
//	err            ParseQuantity refused
//	badhex         the line was not hex
package main

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/api/resource"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<26)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		raw, err := hex.DecodeString(in.Text())
		if err != nil {
			fmt.Fprintln(out, "badhex")
			continue
		}
		q, err := resource.ParseQuantity(string(raw))
		if err != nil {
			fmt.Fprintln(out, "err")
			continue
		}
		fmt.Fprintf(out, "ok %d\n", q.Value())
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "quantity-oracle:", err)
		os.Exit(1)
	}
}
