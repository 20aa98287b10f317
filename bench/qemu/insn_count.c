/*
 * A qemu TCG plugin that counts the guest instructions a program executes (qemu-user 7.2,
 * plugin API version 1: Debian 12's qemu-user accepts -plugin but ships no contrib plugins).
 * Every translated block adds its instruction count to one counter when it runs (an inline add,
 * no callback); the total is printed to stderr at exit as `insn_count: N`.
 *
 * The counter is not atomic: count single-threaded guests (tract and onnxruntime on 1 thread).
 * Build: gcc -O2 -shared -fPIC -o insn_count.so insn_count.c
 * Use:   qemu-aarch64 -L /usr/aarch64-linux-gnu -plugin ./insn_count.so BINARY ARGS...
 * Only the few declarations it needs of qemu's public plugin API (include/qemu/qemu-plugin.h,
 * version 1), written out here because Debian does not package that header.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t; /* only passed by pointer */

enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *), void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t insns;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, qemu_plugin_tb_n_insns(tb));
}

static void on_exit(qemu_plugin_id_t id, void *userdata) {
    (void)id;
    (void)userdata;
    fprintf(stderr, "insn_count: %" PRIu64 "\n", insns);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    (void)info;
    (void)argc;
    (void)argv;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
