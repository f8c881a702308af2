package resolver

import (
	"bufio"
	"net/netip"
	"os"
	"strings"
)

// readHosts parses a hosts file into lower-case names and their addresses.
func readHosts(path string) (map[string][]netip.Addr, error) {
	f, err := os.Open(path)
	if err != nil {
		return map[string][]netip.Addr{}, err
	}
	defer f.Close()
	hosts := map[string][]netip.Addr{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		addr, err := netip.ParseAddr(fields[0])
		if err != nil || addr.Zone() != "" {
			continue
		}
		for _, name := range fields[1:] {
			name = strings.ToLower(strings.TrimSuffix(name, "."))
			hosts[name] = append(hosts[name], addr.Unmap())
		}
	}
	return hosts, sc.Err()
}
