// Tile arithmetic of the wgmma sparse MLA kernel (sparse_mla_wgmma.cu), as
// plain scalar code so the host check can walk every element of every tile:
// where a q / key / P element sits in shared memory, what a no-swizzle wgmma
// descriptor makes the tensor core read for an operand element, which
// accumulator register of which thread holds an output element, and the
// shared-memory budget.
//
// The descriptor model (desc_k_major / desc_mn_major) is this code's reading
// of the PTX ISA's "matrix descriptor" section for the no-swizzle layout: a
// core matrix is 8 rows of 16 contiguous bytes; LBO is the distance between
// core matrices adjacent along K, SBO along M/N; a K-major operand's 16 bytes
// run along K, an MN-major operand's along M/N. The host check proves the
// kernel's offsets agree with that model — whether the model is the
// hardware's is something only a GPU run can show.
#pragma once
#include "common.cuh"

namespace dsport {

constexpr int WG_HEADS = 64;     // M of every wgmma: the 64 query heads of one CTA
constexpr int WG_KEYS = 64;      // keys per tile: N of QK^T (32 per warpgroup), K of P.V
constexpr int WG_THREADS = 256;  // two warpgroups: each owns half the keys of S and half the value dims of O
constexpr int WG_DQK = 576, WG_DV = 512;
constexpr int WG_KEYS_PER_WG = WG_KEYS / 2;  // 32: the QK^T wgmma is m64n32k16
constexpr int WG_DV_PER_WG = WG_DV / 2;      // 256: the P.V wgmma is m64n256k16 (128 fp32 registers a thread)
constexpr int WG_CORE = 128;                 // bytes of one core matrix: 8 rows x 16 B

// Rows of the q and key tiles are 576 bf16 = 1152 B = 72 core matrices wide; the P tile's are 64 keys = 128 B.
constexpr int WG_QK_ROW = WG_DQK * 2;
constexpr int WG_P_ROW = WG_KEYS * 2;

// Byte offset of (row, kbyte) in a no-swizzle core-matrix tile with rows of row_bytes:
// the 8 rows of a row group are stored core matrix after core matrix along the row.
DS_HD int tile_offset(int row, int kbyte, int row_bytes) {
  return (row >> 3) * (row_bytes / 16 * WG_CORE) + (kbyte >> 4) * WG_CORE + (row & 7) * 16 + (kbyte & 15);
}

// Bytes between two 8-row groups of such a tile: the SBO of a K-major view, the LBO of an MN-major one.
DS_HD int tile_group_bytes(int row_bytes) { return row_bytes / 16 * WG_CORE; }

// The byte a no-swizzle descriptor (start 0) addresses for element (mn, k) of a 16-bit operand.
DS_HD int desc_k_major(int mn, int k, int lbo, int sbo) {
  return (mn >> 3) * sbo + (k >> 3) * lbo + (mn & 7) * 16 + (k & 7) * 2;
}
DS_HD int desc_mn_major(int mn, int k, int lbo, int sbo) {
  return (mn >> 3) * sbo + (k >> 3) * lbo + (k & 7) * 16 + (mn & 7) * 2;
}

// The descriptor's 64 bits from a shared-memory byte address, LBO and SBO (no swizzle, base offset 0):
// address, LBO and SBO in 16-byte units, 14 bits each at bits 0, 16 and 32.
DS_HD uint64_t desc_bits(uint32_t smem_addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((smem_addr & 0x3ffffu) >> 4) | ((uint64_t)((lbo >> 4) & 0x3fffu) << 16) |
         ((uint64_t)((sbo >> 4) & 0x3fffu) << 32);
}

// The descriptors the kernel hands each wgmma, per operand and k16 step: start (bytes from the
// tile's base), LBO, SBO. A k16 step is 16 bf16 = 32 bytes = 2 core matrices along K.
struct WgDesc { int start, lbo, sbo; };
// S = Q K^T: A = q [64 heads][576] K-major; B = keys 32 wg .. 32 wg + 31 of the key tile, K-major.
DS_HD WgDesc qk_a_desc(int ks) { return WgDesc{ks * 2 * WG_CORE, WG_CORE, tile_group_bytes(WG_QK_ROW)}; }
DS_HD WgDesc qk_b_desc(int wg, int ks) {
  return WgDesc{(WG_KEYS_PER_WG * wg / 8) * tile_group_bytes(WG_QK_ROW) + ks * 2 * WG_CORE, WG_CORE, tile_group_bytes(WG_QK_ROW)};
}
// O += P V: A = P [64 heads][64 keys] K-major; B = value dims 256 wg .. 256 wg + 255 of the same key
// tile, MN-major: along N (dims) the next core matrix is the next one in the row (+128 B, the SBO),
// along K (keys) it is the next 8-row group (the LBO).
DS_HD WgDesc pv_a_desc(int ks) { return WgDesc{ks * 2 * WG_CORE, WG_CORE, tile_group_bytes(WG_P_ROW)}; }
DS_HD WgDesc pv_b_desc(int wg, int ks) {
  return WgDesc{wg * (WG_DV_PER_WG / 8) * WG_CORE + ks * 2 * tile_group_bytes(WG_QK_ROW), tile_group_bytes(WG_QK_ROW), WG_CORE};
}

// The m64nN fp32 accumulator fragment of one warpgroup: register i (of N / 2) of thread t (of 128)
// holds row 16 * warp + lane / 4 (+ 8 for registers 2, 3 of each group of four), column
// 8 * (i / 4) + 2 * (lane % 4) + i % 2 — the layout the PTX ISA draws for wgmma's D.
DS_HD int acc_row(int t, int i) { return 16 * (t >> 5) + ((t & 31) >> 2) + 8 * ((i >> 1) & 1); }
DS_HD int acc_col(int t, int i) { return 8 * (i >> 2) + 2 * (t & 3) + (i & 1); }

// Shared memory, dynamic (over the 48 KB static limit): q 64 x 576 bf16, one key tile 64 x 576 bf16,
// P 64 x 64 bf16, the two warpgroups' row maxima and row sums, and the tile's index bookkeeping.
// 154 KiB of H200's 227 KiB. A second key tile (double buffering, +72 KiB) would still fit, with 1.25 KiB
// to spare: the step after measuring; staging the raw FP8 bytes (41 KiB a tile) instead leaves more room.
constexpr int WG_Q_OFF = 0;
constexpr int WG_K_OFF = WG_Q_OFF + WG_HEADS * WG_QK_ROW;
constexpr int WG_P_OFF = WG_K_OFF + WG_KEYS * WG_QK_ROW;
constexpr int WG_MAX_OFF = WG_P_OFF + WG_HEADS * WG_P_ROW;
constexpr int WG_SUM_OFF = WG_MAX_OFF + 2 * WG_HEADS * 4;
constexpr int WG_WHERE_OFF = WG_SUM_OFF + 2 * WG_HEADS * 4;
constexpr int WG_VALID_OFF = WG_WHERE_OFF + WG_KEYS * 8;
constexpr int WG_SMEM_BYTES = WG_VALID_OFF + WG_KEYS * 4;

}  // namespace dsport
