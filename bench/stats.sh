# Sourced by bench/http.sh and bench/sql.sh: the statistics both print.

# The median of the numbers on standard input (separated by spaces or newlines); "nan"
# when there are none.
median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{a[NR]=$1} END { if (NR == 0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# a / b to two decimals; "-" when either is missing or b is not positive.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "nan" || b == "nan" || a == "" || b + 0 <= 0) print "-"; else printf "%.2f", a/b }'; }

# The ratios of two ways round by round, with their median: "r1 r2 ... (median m)", or
# "-" when the two lists differ in length (a round of one way failed). The two ways of a
# round ran one after the other, so these ratios are spared the machine's drift between
# rounds, which a ratio of medians carries.
paired() {
  local ratios
  ratios=$(awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); m = split(b, y, " ")
    if (n != m) exit
    for (i = 1; i <= n; i++) if (y[i] > 0) printf "%.2f ", x[i] / y[i] }')
  if [ -z "$ratios" ]; then echo "-"; return; fi
  echo "${ratios}(median $(median <<<"$ratios"))"
}
