package lbmap

// Regenerate with `go generate ./...` from the repository root (needs Debian's clang-19, llvm-19 and libbpf-dev).
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -go-package lbmap lb bpf/lb.c -- -O2 -g -Wall -Werror -mcpu=v3 -I../internal/bpf/include -I../conntrack/bpf -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -go-package lbmap sock bpf/sock.c -- -O2 -g -Wall -Werror -mcpu=v3 -I../internal/bpf/include -I../conntrack/bpf -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -go-package lbmap nodeport bpf/nodeport.c -- -O2 -g -Wall -Werror -mcpu=v3 -I../internal/bpf/include -I../conntrack/bpf -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu
