//! The FLOP count of `cdm bench` (convolutions, linear layers and attention products, 2 per
//! multiply-add, as PyTorch's flop_counter counts them) against a count by hand.
use cdm::nets::{BackboneConfig, Head, MlpConfig, UnetConfig};

/// A two-stage UNet CDM on 1×8×8 (widths 8, 16; attention at 4×4 and in the middle; 5 levels),
/// layer by layer: 2·C_in·C_out·k²·pixels per convolution, 2·(HW)²·C per attention product.
#[test]
fn a_small_unet_counts_as_by_hand() {
    let cfg = UnetConfig {
        channels: 8,
        channel_mult: vec![1, 2],
        res_blocks: 1,
        attention_resolutions: vec![4],
        groups: 4,
        ..UnetConfig::tiny()
    };
    let conv = |c_in: f64, c_out: f64, k: f64, pixels: f64| 2.0 * c_in * c_out * k * k * pixels;
    // q, k, v and the projection (1×1), then qᵀk and the weights applied to v, at 16 pixels.
    let attention = |c: f64| conv(c, 3.0 * c, 1.0, 16.0) + conv(c, c, 1.0, 16.0) + 2.0 * 2.0 * 16.0 * 16.0 * c;
    let by_hand = [
        conv(1.0, 8.0, 3.0, 64.0),                                                             // input
        conv(8.0, 8.0, 3.0, 64.0) * 2.0,                                                       // down 0: block 8→8
        conv(8.0, 8.0, 3.0, 16.0),                                                             // downsample to 4×4
        conv(8.0, 16.0, 3.0, 16.0) + conv(16.0, 16.0, 3.0, 16.0) + conv(8.0, 16.0, 1.0, 16.0), // down 1: 8→16, skip
        attention(16.0),                                                                       // down 1 attention
        conv(16.0, 16.0, 3.0, 16.0) * 4.0 + attention(16.0),                                   // middle
        conv(32.0, 16.0, 3.0, 16.0) + conv(16.0, 16.0, 3.0, 16.0) + conv(32.0, 16.0, 1.0, 16.0), // up 1: skip 16
        attention(16.0),
        conv(24.0, 16.0, 3.0, 16.0) + conv(16.0, 16.0, 3.0, 16.0) + conv(24.0, 16.0, 1.0, 16.0), // up 1: skip 8
        attention(16.0),
        conv(16.0, 16.0, 3.0, 64.0), // upsample to 8×8
        conv(24.0, 8.0, 3.0, 64.0) + conv(8.0, 8.0, 3.0, 64.0) + conv(24.0, 8.0, 1.0, 64.0), // up 0: skip 8
        conv(16.0, 8.0, 3.0, 64.0) + conv(8.0, 8.0, 3.0, 64.0) + conv(16.0, 8.0, 1.0, 64.0), // up 0: skip 8
        conv(8.0, 16.0, 3.0, 64.0) + 2.0 * 16.0 * 5.0, // head: conv, linear
    ]
    .iter()
    .sum::<f64>();
    let counted = BackboneConfig::Unet(cfg).forward_flops(&[1, 8, 8], Head::Levels(5)).unwrap();
    assert_eq!(counted, by_hand);
    // The table summed separately (in Python), a check of the table itself.
    assert_eq!(by_hand, 2_215_072.0);
}

/// The DDM's time path (two linear layers on 4C) and embedding projections (one linear per
/// block) count; the MLP's layers are its linear maps.
#[test]
fn time_paths_and_mlps_count() {
    let unet = |head| BackboneConfig::Unet(UnetConfig::tiny()).forward_flops(&[1, 8, 8], head).unwrap();
    // tiny (C = 32, ×1,2,2) on 8×8: the DDM adds the time path, C → 4C → 4C, and a
    // projection 4C → C_out in each of its 11 blocks (C_out summing to 608), and has a 3×3
    // conv C → 1 where the CDM's head has a 3×3 conv C → 2C and a linear 2C → 5.
    let (cdm, ddm) = (unet(Head::Levels(5)), unet(Head::Noise));
    let time = 2.0 * (32.0 * 128.0 + 128.0 * 128.0) + 2.0 * 128.0 * 608.0;
    let heads = 2.0 * 32.0 * 9.0 * 64.0 - (2.0 * 32.0 * 64.0 * 9.0 * 64.0 + 2.0 * 64.0 * 5.0);
    assert_eq!(ddm - cdm, time + heads);
    let mlp = MlpConfig { hidden: 16, blocks: 2, num_labels: 0, fourier: vec![] };
    let flops = BackboneConfig::Mlp(mlp).forward_flops(&[2], Head::Levels(7)).unwrap();
    assert_eq!(flops, 2.0 * (2.0 * 16.0 + 2.0 * 16.0 * 16.0 + 16.0 * 7.0));
    assert!(BackboneConfig::Unet(UnetConfig::tiny()).forward_flops(&[2], Head::Noise).is_err());
}
