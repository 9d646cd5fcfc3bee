package redisq

// Slot is the Redis Cluster hash slot of key: CRC16-XMODEM of its hash tag (or whole name) mod
// 16384. Standalone servers ignore it; Herald uses it to choose between one atomic script and a
// crash-safe sequence of commands when two keys are configured freely.
func Slot(key string) uint16 {
	if tag, ok := hashTag(key); ok {
		key = tag
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc & 16383
}

// hashTag returns what Redis Cluster hashes key on when key has a non-empty {tag}.
func hashTag(key string) (string, bool) {
	open := indexByte(key, '{')
	if open < 0 {
		return "", false
	}
	close := indexByte(key[open+1:], '}')
	if close <= 0 {
		return "", false
	}
	return key[open+1 : open+1+close], true
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}
